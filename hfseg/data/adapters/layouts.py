"""`--layout NAME`: the on-disk layouts hfseg reads as they are, one module each."""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.ade20k import load_ade20k
from hfseg.data.adapters.base import SourceData
from hfseg.data.adapters.camvid import load_camvid
from hfseg.data.adapters.cityscapes import load_cityscapes
from hfseg.data.adapters.folder import load_colormask, load_folder
from hfseg.data.adapters.pets import load_pets
from hfseg.data.adapters.voc import load_voc
from hfseg.errors import HfsegError

LAYOUTS = {
    "folder": load_folder,
    "voc": load_voc,
    "ade20k": load_ade20k,
    "cityscapes": load_cityscapes,
    "camvid": load_camvid,
    "pets": load_pets,
    "colormask": load_colormask,
}


def load_layout(layout: str, data_dir: str | Path, data_args) -> SourceData:
    """Read `data_dir` in `layout` as image/mask pairs per split."""
    if layout not in LAYOUTS:
        raise HfsegError(f"--layout {layout}: unknown layout; choose one of {', '.join(LAYOUTS)}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise HfsegError(f"--data_dir {data_dir}: not a folder")
    return LAYOUTS[layout](data_dir, data_args)
