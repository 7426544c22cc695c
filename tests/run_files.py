"""Helpers of the tests that check what a script leaves on disk and what it prints."""

from pathlib import Path


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``directory``, by relative path, with the file's bytes."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def one_error_line(capsys) -> str:
    """The one ``error:`` line a script printed to stderr (``note:`` lines aside), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]
