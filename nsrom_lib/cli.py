"""Command line: `nsrom ...` / `python -m nsrom_lib ...` (placeholder until the CLI lands)."""


def main(argv=None) -> int:
    return 0
