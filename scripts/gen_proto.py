"""Regenerates the committed gRPC stubs in store/_proto from proto/ (grpcio-tools, pinned).

python scripts/gen_proto.py            # rewrite store/_proto
python scripts/gen_proto.py --out DIR  # write elsewhere (the staleness test compares)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES = ["engram/store/v1/store.proto"]
PACKAGE = "store._proto"


def generate(out_dir: Path) -> None:
    """Writes the stubs under `out_dir` (mirroring proto/'s directories), with imports
    rewritten to live inside the `store._proto` package."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *SOURCES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for path in sorted(Path(tmp).rglob("*.py*")):
            text = path.read_text()
            text = text.replace(
                "from engram.store.v1 import", f"from {PACKAGE}.engram.store.v1 import"
            )
            target = out_dir / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    for package_dir in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (package_dir / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "store" / "_proto")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    generate(args.out)
    print(f"wrote stubs to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
