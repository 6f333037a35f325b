"""The sizes every gRPC edge agrees on, in one place."""

MiB = 1024 * 1024

# gRPC's default message limit is 4 MiB: a tensor chunk, a ring segment or a Stage chunk stays under it, with
# room for the message's other fields.
MAX_CHUNK_BYTES = 4 * MiB - 4096

# The largest message a daemon and its peers send or accept (pacd's max_message_bytes by default).
MESSAGE_LIMIT_BYTES = 8 * MiB

# The controller's Stage calls: a RunStep carries its micro-batches' rows inline.
STAGE_MESSAGE_BYTES = 64 * MiB


def grpc_size_options(limit: int) -> list[tuple[str, int]]:
    """The channel and server options that set both directions' message limit."""
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
