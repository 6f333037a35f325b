"""A home-automation client asking the household's model over gRPC, with only the generated stubs.

    python examples/ask.py HOST:7443 "Is the back door locked?" [--home ~/.config/pac]

It uses the certificate, key and the home's CA certificate from a PAC home directory (`tls/cert.pem`,
`tls/key.pem`, `tls/ca.pem`); a daemon accepts only certificates its home's authority issued, and every
device's certificate carries the name `node.pac` (the TLS authority below; `<node id>.node.pac` pins
one device). Any gRPC language works the same way from proto/pac/v1/assistant.proto.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from pac.v1 import assistant_pb2, assistant_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("question")
    parser.add_argument("--home", type=Path, default=Path.home() / ".config" / "pac")
    args = parser.parse_args()
    tls = args.home / "tls"
    credentials = grpc.ssl_channel_credentials(root_certificates=(tls / "ca.pem").read_bytes(),
                                               private_key=(tls / "key.pem").read_bytes(),
                                               certificate_chain=(tls / "cert.pem").read_bytes())
    options = [("grpc.ssl_target_name_override", "node.pac")]
    with grpc.secure_channel(args.address, credentials, options=options) as channel:
        request = assistant_pb2.GenerateRequest(
            messages=[assistant_pb2.ChatMessage(role="user", content=args.question)], max_new_tokens=96)
        for reply in assistant_pb2_grpc.AssistantStub(channel).Generate(request, timeout=120):
            if reply.HasField("usage"):
                print(f"\n({reply.usage.generated_tokens} tokens, first after "
                      f"{reply.usage.time_to_first_token_s:.2f} s)")
            else:
                print(reply.text, end="", flush=True)


if __name__ == "__main__":
    main()
