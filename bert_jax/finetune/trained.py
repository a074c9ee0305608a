"""A trained setting on disk before anything can fail after it.

Training a setting takes the time; scoring it (metrics, predictions, their files) takes seconds but runs code that
can still fail. So the trained model's outputs on every split (and, with --eval_each_epoch, on the scored splits
after each earlier epoch) go to `<workdir>/runs/<setting>.outputs.npz` as soon as training ends, before anything
is scored. A command that fails while scoring leaves that file, and the same command run again scores the saved
outputs instead of training the setting again. Once the setting's record (`runs/<setting>.json`) is written the
file is removed: the record and the predictions are the result.

The file is used only by a command with the same init, protocol and feature rows (the stamp inside it).
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

_META = "meta"


def outputs_path(workdir: str, setting_name: str) -> str:
    return os.path.join(workdir, "runs", f"{setting_name}.outputs.npz")


def stamp(init_fingerprint: str, protocol: dict, splits: dict[str, dict]) -> dict:
    """What the saved outputs belong to: outputs are per feature row, so the rows of each split are part of it."""
    def rows(features):
        crc = zlib.crc32(np.ascontiguousarray(features["input_ids"]).tobytes())
        return [int(len(features["input_ids"])), crc]

    return {"init_fingerprint": init_fingerprint, "protocol": protocol,
            "rows": {name: rows(features) for name, features in sorted(splits.items())}}


def save(path: str, result: dict, stamp_: dict) -> None:
    """`run_setting`'s result, written whole or not at all (a rename), so a kill mid-write leaves no file to trust."""
    arrays = {f"{epoch}/{split}/{key}": value for epoch, by_split in result["outputs"].items()
              for split, outputs in by_split.items() for key, value in outputs.items()}
    meta = {k: result[k] for k in ("setting", "epochs", "loaded", "seconds", "steps")}
    arrays[_META] = np.frombuffer(json.dumps({**meta, "stamp": stamp_}, default=float).encode(), np.uint8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load(path: str, stamp_: dict, log) -> dict | None:
    """The saved result when `path` holds outputs of this stamp, else None (then the setting trains again)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(data[_META].tobytes().decode())
            if meta.pop("stamp") != json.loads(json.dumps(stamp_, default=float)):
                log(f"{path} is from another init, protocol or data; training that setting again")
                return None
            outputs: dict[int, dict] = {}
            for name in data.files:
                if name != _META:
                    epoch, split, key = name.split("/", 2)
                    outputs.setdefault(int(epoch), {}).setdefault(split, {})[key] = data[name]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log(f"{path} cannot be read ({e}); training that setting again")
        return None
    return {**meta, "outputs": outputs}
