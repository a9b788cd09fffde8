"""A trained posterior on disk: guide parameters plus the facts needed to sample from it.

Holds no private data (only DP-trained parameters), so it can be kept and sampled from later
at no privacy cost. Stored as one .npz (no pickles) with a JSON metadata entry.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from twinnode.atomic import write_bytes_atomic
from twinnode.errors import GeneratorError, SchemaError
from twinnode.generator.privacy import Calibration
from twinnode.generator.settings import GeneratorSettings
from twinnode.schema import Schema

POSTERIOR_FORMAT = "twinnode-posterior/2"
READABLE_FORMATS = ("twinnode-posterior/1", POSTERIOR_FORMAT)  # /1: no noise estimate
NOISE = "noise:"


@dataclass(frozen=True)
class Posterior:
    """Guide parameters of one DP training run, with its settings and privacy facts."""

    params: Mapping[str, np.ndarray]
    schema_hash: str
    n: int
    settings: GeneratorSettings
    calibration: Calibration
    release: str
    created: float
    loc_noise_sd: np.ndarray | None = None   # DP noise sd of the averaged guide locations
    marginals: Mapping[str, Any] | None = None  # the released noisy marginals, if measured

    @property
    def noise_aware(self) -> bool:
        """Whether twins drawn from it carry the DP noise of the guide's locations."""
        return self.loc_noise_sd is not None and self.settings.noise_aware

    def metadata(self) -> dict[str, Any]:
        return {"format": POSTERIOR_FORMAT, "schema_hash": self.schema_hash, "n": self.n,
                "settings": asdict(self.settings), "calibration": self.calibration.to_dict(),
                "release": self.release, "created": self.created,
                "marginals": None if self.marginals is None else dict(self.marginals)}

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        extra = {} if self.loc_noise_sd is None else {f"{NOISE}loc": self.loc_noise_sd}
        np.savez(buf, __metadata__=np.array(json.dumps(self.metadata())), **extra,
                 **{f"param:{k}": np.asarray(v) for k, v in self.params.items()})
        write_bytes_atomic(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, schema: Schema) -> "Posterior":
        """Read a saved posterior; it must have been trained under `schema`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__metadata__"]))
                params = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("param:")}
                noise = z[f"{NOISE}loc"] if f"{NOISE}loc" in z.files else None
        except FileNotFoundError:
            raise GeneratorError(f"{path}: posterior file not found") from None
        except (OSError, ValueError, KeyError) as exc:
            raise GeneratorError(f"{path}: not a readable posterior file: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
            raise GeneratorError(f"{path}: not a {POSTERIOR_FORMAT} file")
        if meta["schema_hash"] != schema.hash:
            raise SchemaError(f"{path}: trained under schema {meta['schema_hash'][:12]}, "
                              f"not {schema.short_hash}")
        try:
            return cls(params=params, schema_hash=meta["schema_hash"], n=int(meta["n"]),
                       settings=GeneratorSettings(**meta["settings"]),
                       calibration=Calibration(**meta["calibration"]),
                       release=str(meta["release"]), created=float(meta["created"]),
                       loc_noise_sd=noise, marginals=meta.get("marginals"))
        except (KeyError, TypeError) as exc:
            raise GeneratorError(f"{path}: incomplete posterior metadata: {exc}") from None
