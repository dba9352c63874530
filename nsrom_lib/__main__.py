"""`python -m nsrom_lib ...` is the `nsrom` command."""

from nsrom_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
