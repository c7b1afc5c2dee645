"""The ``imagingkit`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from imagingkit import __version__
from imagingkit.config import get_settings
from imagingkit.errors import ImagingKitError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagingkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"imagingkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve FHIR and DICOMweb on loopback")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--sandbox", action="store_true", help="serve the generated sandbox cohort")
    source.add_argument("--dicom-dir", type=Path, help="serve a folder of DICOM files")
    serve.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8042, help="TCP port; 0 picks a free one")
    serve.add_argument("--data-dir", type=Path, default=None, help="where sandbox data is kept")
    serve.add_argument(
        "--size",
        choices=["small", "default", "medium", "large"],
        default="default",
        help="sandbox size (default fits Binder; large has over 20,000 instances)",
    )
    serve.add_argument("--seed", type=int, default=42, help="sandbox seed")
    serve.add_argument("--base-url", default="/", help="path prefix of every route")
    serve.add_argument(
        "--ohif",
        type=Path,
        default=None,
        metavar="DIR",
        help="also serve a built OHIF viewer (dist/ of npm @ohif/app) at /ohif/",
    )

    serve.add_argument(
        "--auth",
        nargs="?",
        const=True,
        default=False,
        type=Path,
        metavar="CLIENTS",
        help="require SMART Backend Services tokens from /auth/token, limited to each "
        "client's patients; CLIENTS is a registry JSON file (default: clients and keys "
        "generated in DATA_DIR/auth/)",
    )

    gen = sub.add_parser("generate", help="generate the sandbox data without serving it")
    gen.add_argument("--data-dir", type=Path, default=None)
    gen.add_argument("--size", choices=["small", "default", "medium", "large"], default="default")
    gen.add_argument("--seed", type=int, default=42)

    cache = sub.add_parser("cache", help="inspect or empty the retrieval cache")
    cache.add_argument(
        "action", choices=["info", "clear"], help="info: entries, size; clear: empty it"
    )
    cache.add_argument("--data-dir", type=Path, default=None, help="the cache is DATA_DIR/cache")
    cache.add_argument("--cache-dir", type=Path, default=None, help="a cache folder elsewhere")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            from imagingkit.server.serve import build_components, serve

            settings = get_settings(data_dir=args.data_dir, host=args.host)
            components = build_components(
                settings,
                sandbox=args.sandbox,
                dicom_dir=args.dicom_dir,
                size=args.size,
                seed=args.seed,
                ohif=args.ohif,
                auth=args.auth,
            )
            serve(components, host=settings.host, port=args.port, base_url=args.base_url)
        elif args.command == "generate":
            from imagingkit.sandbox.generate import ensure_sandbox

            settings = get_settings(data_dir=args.data_dir)
            root = ensure_sandbox(settings.data_dir, size=args.size, seed=args.seed)
            print(root)
        elif args.command == "cache":
            from imagingkit.cache import Cache

            store = Cache(args.cache_dir, settings=get_settings(data_dir=args.data_dir))
            if args.action == "info":
                print(store.info())
            else:
                print(f"removed {store.clear()} entries from {store.root}")
    except ImagingKitError as exc:
        print(f"imagingkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
