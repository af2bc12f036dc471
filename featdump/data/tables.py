"""Tables (docs/inputs.md): ``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``, one row per image.

Read with pyarrow in record batches, never whole, so memory does not grow with the file: Parquet in
batches of about :data:`BATCH_BYTES` (row groups before ``--resume``/``--shard``'s start skipped
unread), the text formats in :data:`TEXT_BLOCK`-byte blocks (a longer row that pyarrow cannot extend
its block for: an error saying so).
A path is stored as written (read relative to the table's folder); image bytes are stored as their
struct's ``path``, else ``ROW:<n>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from featdump.data.discover import ImageRef
from featdump.data.remote import is_url, open_input
from featdump.errors import UsageError

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".jsonl")
PATH_COLUMNS = ("path", "image_path", "filepath", "file", "filename", "url")
BATCH_ROWS = 1024  # the most rows of a batch
BATCH_BYTES = 64 << 20  # about the most bytes of a batch (Parquet; from the row groups' uncompressed sizes)
TEXT_BLOCK = 16 << 20  # the block a CSV/TSV/JSONL stream is parsed in: the longest row it reads


def is_table_name(name: str) -> bool:
    return name.lower().endswith(TABLE_EXTENSIONS)


class Table:
    """One table INPUT: its columns checked and its rows counted when opened (exit 2 on a bad column)."""

    def __init__(
        self, path: str, path_column: str | None, image_column: str | None, id_column: str | None,
        keep_columns: Sequence[str] | None, cap: int,
    ) -> None:  # fmt: skip
        self.path, self.cap = path, cap  # cap: --max-image-bytes
        self.kind = next(e for e in TABLE_EXTENSIONS if path.lower().endswith(e)).lstrip(".")
        self.folder = os.path.dirname(path)
        import pyarrow

        self.pa = pyarrow
        schema = self._schema()
        names = list(schema.names)
        if path_column and image_column:
            raise UsageError("--path-column and --image-column exclude each other: paths or image bytes")
        if image_column and self.kind != "parquet":
            raise UsageError(f"--image-column needs a .parquet table ({self.kind} cells cannot hold image bytes)")
        self.keep = list(keep_columns or ())  # stored in /meta/<name>
        named = [("--path-column", path_column), ("--image-column", image_column), ("--id-column", id_column)]
        for option, col in [*named, *(("--keep-columns", c) for c in self.keep)]:
            if col and col not in names:
                raise UsageError(f"{option} {col}: no such column in {path}; columns: {', '.join(names)}")
        if not image_column and not path_column:
            path_column = next((c for c in PATH_COLUMNS if c in names), None)
            if path_column is None and self.kind == "parquet":  # Hugging Face's images: {bytes, path} structs
                image_column = next((f.name for f in schema if _image_struct(self.pa, f.type)), None)
            if path_column is None and image_column is None:
                raise UsageError(
                    f"{path} has none of the columns {', '.join(PATH_COLUMNS)} nor a column of image structs; name the image column with "
                    f"--path-column or --image-column (columns: {', '.join(names)})"
                )
        if self.kind not in ("csv", "tsv"):  # the text formats' cells are read as text
            self._check_type(schema, path_column, image_column)
            for option, col in (("--id-column", id_column), *(("--keep-columns", c) for c in self.keep)):
                if col and self._holds_bytes(schema.field(col).type):  # stored as text: its repr, megabytes a row
                    raise UsageError(f"{option} {col}: the column holds image bytes; {option} stores text values")
        self.path_column, self.image_column, self.id_column = path_column, image_column, id_column
        self.columns = list(dict.fromkeys(c for c in (path_column, image_column, id_column, *self.keep) if c))
        self.rows = self._count()

    # ------------------------------------------------------------------ pyarrow readers

    def _check_type(self, schema: Any, path_column: str | None, image_column: str | None) -> None:
        """A path column holds text, an image column bytes: a column of the other kind (or of
        numbers, lists, ...) is a UsageError naming the option to use, before any row is read."""
        types = self.pa.types
        column = str(path_column or image_column)
        kind = schema.field(column).type
        if types.is_dictionary(kind):
            kind = kind.value_type
        text = types.is_string(kind) or types.is_large_string(kind) or str(kind) == "string_view"
        raw, struct = self._holds_bytes(kind, struct=False), _image_struct(self.pa, kind)
        if types.is_null(kind) or (text if path_column else raw or struct):
            return
        if path_column and (raw or struct):
            held = "{bytes, path} structs" if struct else "binary"
            raise UsageError(f"column {column} holds image bytes ({held}); use --image-column {column}")
        if image_column and text:
            raise UsageError(f"column {column} holds text, not image bytes; for paths or URLs use --path-column {column}")
        want = "paths or URLs (text)" if path_column else "image bytes (binary, or {bytes, path} structs)"
        raise UsageError(f"column {column} holds {kind} values, not {want}")

    def _holds_bytes(self, kind: Any, struct: bool = True) -> bool:
        """A column of binary values (or, with ``struct``, of image structs)."""
        types = self.pa.types
        kind = kind.value_type if types.is_dictionary(kind) else kind
        raw = types.is_binary(kind) or types.is_large_binary(kind) or types.is_fixed_size_binary(kind) or str(kind) == "binary_view"
        return raw or (struct and _image_struct(self.pa, kind))

    def _schema(self) -> Any:
        try:
            with open_input(self.path) as fh:
                return self._parquet(fh).schema_arrow if self.kind == "parquet" else self._text(fh, None).schema
        except OSError as exc:
            raise UsageError(f"cannot read table {self.path}: {exc.strerror or exc}") from None
        except self.pa.ArrowException as exc:
            raise UsageError(f"cannot read table {self.path}: {_arrow_why(exc)}") from None

    def _parquet(self, fh: Any) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(fh, buffer_size=1 << 20)  # pages read as needed, not a column chunk whole

    def _text(self, fh: Any, columns: list[str] | None) -> Any:
        if self.kind == "jsonl":
            import pyarrow.json as pj

            return pj.open_json(fh, read_options=pj.ReadOptions(block_size=TEXT_BLOCK))
        import pyarrow.csv as pc

        parse = pc.ParseOptions(delimiter="\t" if self.kind == "tsv" else ",")
        convert = pc.ConvertOptions(
            column_types={c: self.pa.string() for c in columns or ()},
            include_columns=columns or [],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        read = pc.ReadOptions(block_size=TEXT_BLOCK)
        return pc.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)

    def _count(self) -> int:
        try:
            with open_input(self.path) as fh:
                if self.kind == "parquet":
                    return int(self._parquet(fh).metadata.num_rows)
                return sum(batch.num_rows for batch in self._text(fh, self.columns[:1]))  # one column parsed
        except self.pa.ArrowException as exc:
            raise UsageError(f"cannot read table {self.path}: {_arrow_why(exc)}") from None

    def _batches(self, start: int) -> Iterator[tuple[int, int, Any]]:
        """``(first row, rows, RecordBatch)`` from the batch holding row ``start`` on."""
        with open_input(self.path) as fh:
            at = 0
            if self.kind == "parquet":
                pf = self._parquet(fh)
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if at + n > start:  # else a whole row group before ``start``: skipped unread
                        yield from self._row_group(pf, g, at)
                    at += n
                return
            for batch in self._text(fh, self.columns):
                if at + batch.num_rows > start:
                    yield at, batch.num_rows, batch
                at += batch.num_rows

    def _row_group(self, pf: Any, g: int, at: int) -> Iterator[tuple[int, int, Any]]:
        """One Parquet row group in batches of at most about :data:`BATCH_BYTES`, from its footer's
        uncompressed sizes of the columns read: a row's share of a column, or (dictionary-encoded:
        each row may be its largest value) the whole column. A group whose rows average over the
        cap is not read: ``batch`` None."""
        group, n = pf.metadata.row_group(g), pf.metadata.row_group(g).num_rows
        chunks = [group.column(i) for i in range(group.num_columns)]
        chunks = [c for c in chunks if c.path_in_schema.split(".")[0] in self.columns]
        if sum(c.total_uncompressed_size for c in chunks) > n * self.cap:
            yield at, n, None
            return
        row = sum(c.total_uncompressed_size // (1 if c.has_dictionary_page else max(n, 1)) for c in chunks)
        rows = max(1, min(BATCH_ROWS, BATCH_BYTES // max(row, 1)))
        for batch in pf.iter_batches(batch_size=rows, row_groups=[g], columns=self.columns):
            yield at, batch.num_rows, batch
            at += batch.num_rows

    # ------------------------------------------------------------------ rows -> refs

    def refs(self, start: int, stop: int) -> Iterator[ImageRef]:
        """Rows ``start`` to ``stop - 1`` as image references, in table order."""
        if start >= stop:
            return
        try:
            for first, n, batch in self._batches(start):
                cols = {name: batch.column(name).to_pylist() for name in self.columns} if batch else {}
                for k in range(max(0, start - first), n):
                    row = first + k
                    if row >= stop:
                        return
                    if batch is None:
                        why = f"row {row}: its row group averages more than --max-image-bytes ({self.cap} bytes) a row"
                        yield ImageRef(f"ROW:{row}", "", id="" if self.id_column else None, error=why)
                        continue
                    values = {c: v[k] for c, v in cols.items()}
                    ref = self._ref(row, values)
                    yield replace(ref, meta={c: "" if values[c] is None else str(values[c]) for c in self.keep}) if self.keep else ref
        except self.pa.ArrowException as exc:
            from featdump.errors import FeatdumpError

            raise FeatdumpError(f"cannot read table {self.path}: {_arrow_why(exc)}") from None

    def _ref(self, row: int, values: dict[str, Any]) -> ImageRef:
        ident = None
        if self.id_column:
            v = values[self.id_column]
            ident = "" if v is None or v != v else str(v)  # missing (null, NaN): stored as ""
        if self.image_column:
            v = values[self.image_column]  # bytes, or an image struct {bytes, path}
            data, stored = (v.get("bytes"), v.get("path")) if isinstance(v, dict) else (v, None)
            stored = stored or f"ROW:{row}"
            if not isinstance(data, (bytes, bytearray)):
                return ImageRef(stored, "", id=ident, error=f"row {row}: no image bytes in column {self.image_column!r}")
            return ImageRef(stored, "", id=ident, data=bytes(data))
        v = values[str(self.path_column)]
        if v is None or not str(v).strip():
            return ImageRef(f"ROW:{row}", "", id=ident, error=f"row {row}: no path in column {self.path_column!r}")
        entry = str(v).strip()
        source = entry if os.path.isabs(entry) or is_url(entry) else os.path.join(self.folder, entry)
        return ImageRef(entry, source, id=ident)


def _arrow_why(exc: BaseException) -> str:
    """pyarrow's first line, but a row longer than a parse block in the user's words."""
    text = str(exc).splitlines()[0]
    if "straddl" in text or "block size" in text:
        return f"a row is longer than {TEXT_BLOCK >> 20} MiB (one row per image is expected)"
    return text


def _image_struct(pa: Any, kind: Any) -> bool:
    return bool(pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)
