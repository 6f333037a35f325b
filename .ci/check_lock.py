"""Compare the installed distributions with the lock files: any difference is an error.

Also runs `pip check`, so a lock missing a dependency fails too; only the packages of --no-deps files
(model files whose own requirements are deliberately not installed) may lack theirs.
The editable project itself is not compared.
"""

import argparse
import re
import subprocess
import sys


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str], where: str) -> dict[str, str]:
    found = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            sys.exit(f"check-lock: {where}:{number}: expected NAME==VERSION, got {line!r}")
        found[normalise(name)] = version.strip()
    return found


def read(path: str) -> dict[str, str]:
    with open(path) as f:
        return pins(f.read().splitlines(), path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lock", action="append", default=[], help="a pip-compile lock file")
    parser.add_argument("--no-deps", action="append", default=[], help="pins installed with --no-deps")
    parser.add_argument("--pin", action="append", default=[], help="NAME==VERSION installed otherwise")
    args = parser.parse_args(argv)
    wanted: dict[str, str] = pins(args.pin, "--pin")
    for path in args.lock:
        wanted.update(read(path))
    without_deps = {}
    for path in args.no_deps:
        without_deps.update(read(path))
    wanted.update(without_deps)
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    installed = pins([line for line in freeze if "==" in line], "pip freeze")
    unpinned = [line for line in freeze if line.strip() and "==" not in line and not line.startswith("#")]
    problems = [f"{name}: installed {installed[name]}, locked {version}"
                for name, version in sorted(wanted.items()) if name in installed and installed[name] != version]
    problems += [f"{name}: locked {version}, not installed" for name, version in sorted(wanted.items())
                 if name not in installed]
    problems += [f"{name}=={version}: installed, not in the lock" for name, version in sorted(installed.items())
                 if name not in wanted]
    problems += [f"{line}: installed without a version pin" for line in unpinned]
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    problems += [f"pip check: {line}" for line in check.splitlines()
                 if line.strip() and "requires" in line and normalise(line.split()[0]) not in without_deps]
    if problems:
        print("check-lock: the environment differs from the lock:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"check-lock: {len(installed)} packages, exactly the locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
