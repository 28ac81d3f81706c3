"""What a search indexes: folders as sources, text and docstring extraction, the bundled corpus."""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from agentrt.log import get_logger

__all__ = [
    "CACHE_DIR_ENV",
    "CORPUS_VERSION",
    "DEFAULT_STDLIB_FILES",
    "Source",
    "default_cache_dir",
    "default_corpus",
    "extract",
]

_log = get_logger(__name__)

#: Environment variable naming the cache folder (the index lives in ``$AGENTRT_CACHE_DIR/search``).
CACHE_DIR_ENV: Final = "AGENTRT_CACHE_DIR"
#: Bump when what the default corpus holds changes, so stale caches are not reused.
CORPUS_VERSION: Final = 1
#: How many stdlib modules the default corpus takes (all of them on CPython 3.11: about 400).
DEFAULT_STDLIB_FILES: Final = 500
_SUFFIXES: Final = frozenset({".md", ".txt", ".rst", ".py"})
_SKIP_DIRS: Final = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
# Tests and tooling rather than library documentation (encodings: 120 near-identical codecs).
_SKIP_STDLIB: Final = _SKIP_DIRS | {
    "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
    "encodings", "distutils", "__phello__",
}  # fmt: skip
_MAX_FILE_BYTES: Final = 4_000_000


def _python_doc(rel: str, data: bytes) -> tuple[str, str] | None:
    """(title, body) from a module's docstrings and its public classes' and functions'."""
    with warnings.catch_warnings():
        # Old modules hold invalid escapes, whose DeprecationWarning must not fail the build
        # under -W error. (catch_warnings is process-wide: another thread's warning raised in
        # this short window is silenced too; Python 3.14 makes it context-local.)
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(data, filename=rel)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
    module = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    module_doc = ast.get_docstring(tree) or ""
    parts = [f"{module}\n{module_doc}"] if module_doc else []
    todo: list[tuple[str, ast.AST]] = [("", tree)]
    while todo:
        prefix, node = todo.pop(0)
        for child in getattr(node, "body", []):
            if not isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if child.name.startswith("_"):
                continue
            qualname = prefix + child.name
            if doc := ast.get_docstring(child):
                parts.append(f"{qualname}\n{doc}")
            if isinstance(child, ast.ClassDef):
                todo.append((qualname + ".", child))
    if not parts:
        return None
    summary = module_doc.strip().splitlines()[0] if module_doc.strip() else ""
    return (f"{module}: {summary}" if summary else module), "\n\n".join(parts)


def _text_doc(rel: str, data: bytes) -> tuple[str, str] | None:
    """(title, body) of a text file: the first heading (or line) and the whole text."""
    text = data.decode("utf-8", errors="replace").replace("\x00", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    # A Markdown "# " heading, else the first line with a letter (not an reST over-line).
    plain = next((line for line in lines if any(c.isalnum() for c in line)), lines[0])
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), plain)
    return title[:120], text


def extract(rel: str, data: bytes) -> tuple[str, str] | None:
    """(title, body) of one file: docstrings of a ``.py``, else the text; None: nothing to index."""
    if PurePosixPath(rel).suffix.lower() == ".py":
        return _python_doc(rel, data)
    return _text_doc(rel, data)


@dataclass(frozen=True, slots=True)
class Source:
    """A folder to index, with the prefix its documents' paths get."""

    root: Path
    label: str = ""
    suffixes: frozenset[str] = _SUFFIXES
    skip_dirs: frozenset[str] = _SKIP_DIRS
    skip_prefixes: tuple[str, ...] = (".",)
    recursive: bool = True
    max_files: int | None = None

    def scan(self) -> dict[str, tuple[Path, str, int, int]]:
        """Stored path -> (file, path relative to root, mtime_ns, size)."""
        files: list[Path] = []
        if self.recursive:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [
                    d for d in dirnames
                    if d not in self.skip_dirs and not d.startswith(self.skip_prefixes)
                ]  # fmt: skip
                files += [Path(dirpath, f) for f in filenames if self._wanted(f)]
        elif self.root.is_dir():
            files = [p for p in self.root.iterdir() if self._wanted(p.name) and p.is_file()]
        rels = sorted((p.relative_to(self.root).as_posix(), p) for p in files)
        # Shallow paths first, so a cap keeps top-level modules before deep package internals.
        rels.sort(key=lambda item: item[0].count("/"))
        found: dict[str, tuple[Path, str, int, int]] = {}
        for rel, path in rels[: self.max_files]:
            try:
                st = path.stat()
            except OSError:
                continue
            if st.st_size <= _MAX_FILE_BYTES:
                key = f"{self.label}/{rel}" if self.label else rel
                found[key] = (path, rel, st.st_mtime_ns, st.st_size)
        return found

    def _wanted(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in self.suffixes and not name.startswith(".")


def default_cache_dir() -> Path:
    """Where the default corpus index is cached.

    ``$AGENTRT_CACHE_DIR/search`` if set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) +
    ``agentrt/search``.
    """
    if base := os.environ.get(CACHE_DIR_ENV):
        return Path(base) / "search"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agentrt" / "search"


def default_corpus(
    cache_dir: str | os.PathLike[str] | None, stdlib_max_files: int
) -> tuple[list[Source], Path | None]:
    """The bundled corpus's sources (stdlib docstrings, agentrt's docs) and its cached index file.

    The index file is None (an in-memory index, and a warning logged) when ``cache_dir`` cannot
    be created.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = [
        Source(
            stdlib,
            "stdlib",
            frozenset({".py"}),
            _SKIP_STDLIB,
            (".", "config-"),
            max_files=stdlib_max_files,
        )
    ]
    project = Path(__file__).resolve().parents[2]
    if (project / "agentrt").is_dir() and (project / "pyproject.toml").is_file():
        md = frozenset({".md"})
        sources.append(Source(project, "agentrt", md, recursive=False))
        sources.append(Source(project / "docs", "agentrt/docs", md, recursive=False))
    impl = sys.implementation.name
    version = ".".join(map(str, sys.version_info[:3]))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    index: Path | None = folder / f"stdlib-{impl}{version}-corpus{CORPUS_VERSION}.sqlite3"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _log.warning("search_cache_unavailable", cache_dir=str(folder), error=str(exc))
        index = None
    return sources, index
