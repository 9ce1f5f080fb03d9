"""A labelled table plus what the user declares about it (public bounds, categories, classes)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from securetrain.data.identity import DataIdentity, commit, public_identity
from securetrain.errors import DataError

Transform = Literal["linear", "log"]


@dataclass(frozen=True)
class Schema:
    """Public knowledge declared by the user: it costs no privacy budget.

    ``bounds`` maps numeric columns to (lower, upper); ``transforms`` marks right-skewed numeric
    columns for a log scale (``"log"``; default ``"linear"``); ``categories`` maps categorical
    columns to their allowed values; ``classes`` lists the label's values; ``identifiers`` names
    the columns that are not features (an ID, a name: ``"identifier": true``). A declared column's
    kind comes from its declaration (bounds or a transform: numeric; categories: categorical),
    never from the values or their Arrow type; which columns are features comes from the
    declaration and ``--features`` alone, never from the values. Anything not declared, an
    undeclared column's kind included, is estimated with differential privacy from the training
    split.
    """

    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)
    classes: list[str] | None = None
    transforms: dict[str, Transform] = field(default_factory=dict)
    identifiers: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, origin: str = "schema") -> Schema:
        if not isinstance(data, dict):
            raise DataError(f"{origin} must be a JSON object. Found {type(data).__name__}.")
        bounds: dict[str, tuple[float, float]] = {}
        categories: dict[str, list[str]] = {}
        transforms: dict[str, Transform] = {}
        identifiers: list[str] = []
        for name, spec in (data.get("columns") or {}).items():
            if not isinstance(spec, dict):
                raise DataError(f"{origin}: column {name!r} must map to an object. Found {spec!r}.")
            if "bounds" in spec:
                b = spec["bounds"]
                ok = (
                    isinstance(b, list)
                    and len(b) == 2
                    and all(isinstance(v, (int, float)) for v in b)
                )
                if not ok or not (math.isfinite(b[0]) and math.isfinite(b[1]) and b[0] < b[1]):
                    raise DataError(
                        f"{origin}: bounds of {name!r} must be [lower, upper] with lower < upper. "
                        f"Found {b!r}."
                    )
                bounds[name] = (float(b[0]), float(b[1]))
            if "categories" in spec:
                c = spec["categories"]
                if not isinstance(c, list) or not c:
                    raise DataError(
                        f"{origin}: categories of {name!r} must be a non-empty list. Found {c!r}."
                    )
                categories[name] = [str(v) for v in c]
            if "transform" in spec:
                t = spec["transform"]
                if t not in ("linear", "log"):
                    raise DataError(
                        f"{origin}: transform of {name!r} must be 'linear' or 'log'. Found {t!r}."
                    )
                transforms[name] = t
            if "identifier" in spec:
                if spec["identifier"] is not True or len(spec) > 1:
                    raise DataError(
                        f"{origin}: an identifier column {name!r} is declared as "
                        f'{{"identifier": true}} and nothing else. Found {spec!r}.'
                    )
                identifiers.append(name)
            if "categories" in spec and ("bounds" in spec or "transform" in spec):
                raise DataError(
                    f"{origin}: column {name!r} declares categories and also bounds or a "
                    f"transform; a column is either numeric or categorical. Found {spec!r}."
                )
        classes = data.get("classes")
        if classes is not None and (not isinstance(classes, list) or len(classes) < 2):
            raise DataError(f"{origin}: classes must list at least two labels. Found {classes!r}.")
        return cls(
            bounds,
            categories,
            [str(v) for v in classes] if classes else None,
            transforms,
            identifiers,
        )

    def kind(self, name: str) -> str | None:
        """``"numeric"`` or ``"categorical"`` as declared, or None for an undeclared column."""
        if name in self.categories:
            return "categorical"
        if name in self.bounds or name in self.transforms:
            return "numeric"
        return None

    def to_json(self) -> dict[str, Any]:
        columns: dict[str, dict[str, Any]] = {}
        for name, (lo, hi) in self.bounds.items():
            columns.setdefault(name, {})["bounds"] = [lo, hi]
        for name, cats in self.categories.items():
            columns.setdefault(name, {})["categories"] = list(cats)
        for name, transform in self.transforms.items():
            columns.setdefault(name, {})["transform"] = transform
        for name in self.identifiers:
            columns[name] = {"identifier": True}
        out: dict[str, Any] = {"columns": columns}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"Schema file not found: {str(p)!r}.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"Schema file {str(p)!r} is not valid JSON: {exc}") from None
        return cls.from_json(data, origin=f"schema {str(p)!r}")


@dataclass
class TabularData:
    """Features (an Arrow table), labels as strings, and what is public about them.

    ``sha256`` is the digest of the data as read (the file's bytes, the sealed manifest, or a
    built-in table); it identifies the data to its holder and is never released, except where
    the table itself is ``public`` (a built-in dataset) or the digest is the sealed manifest's.
    """

    features: pa.Table
    labels: np.ndarray
    label_name: str
    source: str
    sha256: str
    schema: Schema = field(default_factory=Schema)
    image_shape: tuple[int, ...] | None = None
    dropped_identifiers: list[str] = field(default_factory=list)
    sealed: dict[str, str] | None = None
    public: bool = False

    @property
    def n_rows(self) -> int:
        return self.features.num_rows

    def commit(self, bundle: Path) -> DataIdentity:
        """This data's identity for the card of the bundle at ``bundle``, never a hash of the
        plaintext (see :mod:`securetrain.data.identity`)."""
        return commit(self, bundle)

    def public_identity(self) -> DataIdentity | None:
        """This data's identity where it needs no key (sealed or built-in data), else None."""
        return public_identity(self)

    def to_table(self) -> pa.Table:
        """Features and the label column as one table."""
        return self.features.append_column(self.label_name, [list(self.labels)])

    def take(self, rows: np.ndarray) -> TabularData:
        return TabularData(
            features=self.features.take(pa.array(rows, type=pa.int64())),
            labels=self.labels[rows],
            label_name=self.label_name,
            source=self.source,
            sha256=self.sha256,
            schema=self.schema,
            image_shape=self.image_shape,
            dropped_identifiers=self.dropped_identifiers,
            sealed=self.sealed,
            public=self.public,
        )


def is_numeric(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


def from_table(
    table: pa.Table,
    *,
    label: str | None,
    source: str,
    sha256: str,
    features: Sequence[str] | None = None,
    schema: Schema | None = None,
    keep_identifiers: bool = False,
) -> TabularData:
    """Split a table into features and labels, checking the columns the user named.

    The features are ``features`` if named, else every column but the label and the schema's
    declared identifiers (kept with ``keep_identifiers``): a decision from declarations alone,
    which no row can change."""
    names = table.column_names
    if label is None:
        raise DataError(f"Name the label column with `label`; columns are: {', '.join(names)}.")
    if label not in names:
        raise DataError(f"No label column {label!r} in the data; columns are: {', '.join(names)}.")
    if features:
        missing = [f for f in features if f not in names]
        if missing:
            raise DataError(
                f"No feature column {missing[0]!r} in the data; columns are: {', '.join(names)}."
            )
        if label in features:
            raise DataError(f"The label column {label!r} cannot also be a feature.")
        chosen = list(features)
    else:
        chosen = [n for n in names if n != label]
    label_col = table.column(label)
    nulls = label_col.null_count
    if pa.types.is_floating(label_col.type):
        nulls += pc.sum(pc.is_nan(label_col)).as_py() or 0
    if nulls:
        raise DataError(
            f"Label column {label!r} has {nulls} missing value(s); drop or fill those rows."
        )
    declared = schema or Schema()
    dropped: list[str] = []
    if not keep_identifiers and not features:
        dropped = [n for n in chosen if n in declared.identifiers]
        chosen = [n for n in chosen if n not in dropped]
    if not chosen:
        raise DataError("No feature columns are left to train on.")
    labels = np.array([_label_str(v) for v in label_col.to_pylist()], dtype=object)
    return TabularData(
        features=table.select(chosen),
        labels=labels,
        label_name=label,
        source=source,
        sha256=sha256,
        schema=declared,
        dropped_identifiers=dropped,
    )


def _label_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
