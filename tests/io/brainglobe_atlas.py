"""An Allen CCFv3 atlas at 100 µm in brainglobe-atlasapi's current on-disk layout, for the tests.

The annotation of ``../shared/data/atlas_ccf2017`` (Allen Institute terms; Wang et al. 2020) is packaged with
brainglobe-atlasapi's own ``atlas_generation.stacks`` writers and its own ``generate_metadata_dict``; the
terminology CSV has the columns its ``load_structures_from_csv`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from brainglobe_atlasapi.atlas_generation import stacks
from brainglobe_atlasapi.atlas_generation.atlas_packaging_data import (
    AnnotationInfo,
    CoordinateSpaceInfo,
    TemplateInfo,
    TerminologyInfo,
)
from brainglobe_atlasapi.atlas_generation.metadata_utils import generate_metadata_dict

CCF = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "atlas_ccf2017"


def asr(volume: np.ndarray) -> np.ndarray:
    """The shared files' axes (left→right, anterior→posterior, dorsal→ventral) → BrainGlobe's "asr"
    (anterior→posterior, superior→inferior, right→left)."""
    return np.ascontiguousarray(volume.transpose(1, 2, 0)[:, :, ::-1])


def structures(narrowed: bool = True) -> list[dict[str, Any]]:
    """The CCF structures; ``narrowed``: without the 62 regions whose parent id exceeds 65535 (brainglobe-atlasapi
    3.0.2 reads parent ids as 16-bit integers and cannot open them; their voxels go to the parent, see
    :func:`narrow`)."""
    table = pd.read_csv(CCF / "structures.csv")
    if narrowed:
        table = table[~(table["parent_structure_id"] > 65535)]
    return [
        {"id": int(r.id), "acronym": str(r.acronym), "name": str(r.name),
         "structure_id_path": [int(i) for i in str(r.structure_id_path).strip("/").split("/")],
         "rgb_triplet": [int(str(r.color_hex_triplet)[i : i + 2], 16) for i in (0, 2, 4)]}
        for r in table.itertuples()
    ]  # fmt: skip


def package(
    root: Path, name: str, version: str, annotation: np.ndarray, hemispheres: np.ndarray | None, narrowed: bool = True
) -> Path:
    """An atlas in brainglobe-atlasapi's layout under ``root`` (the BrainGlobe folder); its manifest."""
    work = root / "brainglobe-atlasapi"
    prefix = name.rsplit("_", 1)[0].replace("_", "-")
    template = TemplateInfo(name=f"{prefix}-template", version=version)
    terminology = TerminologyInfo(name=f"{prefix}-terminology", version=version)
    annotation_info = AnnotationInfo(name=f"{prefix}-annotation", version=version, template=template,
                                     terminology=terminology)  # fmt: skip
    space = CoordinateSpaceInfo(name=f"{prefix}-space", version=version, template=template)
    scale = [[{"type": "scale", "scale": [0.1, 0.1, 0.1]}]]  # BrainGlobe stores millimetres
    stacks.save_template([(annotation > 0).astype(np.uint16) * 300], work / Path(template.stub).parent, scale)
    annotation_dir = work / Path(annotation_info.stub).parent
    stacks.save_annotation([annotation], annotation_dir, scale)
    if hemispheres is not None:
        stacks.save_hemispheres([hemispheres], annotation_dir, scale)
    regions = structures(narrowed)
    terms = pd.DataFrame(
        {
            "identifier": [s["id"] for s in regions],
            "parent_identifier": pd.array(
                [s["structure_id_path"][-2] if len(s["structure_id_path"]) > 1 else None for s in regions],
                dtype="UInt32",
            ),  # fmt: skip
            "annotation_value": [s["id"] for s in regions],
            "name": [s["name"] for s in regions],
            "abbreviation": [s["acronym"] for s in regions],
            "color_hex_triplet": ["#" + "".join(f"{c:02X}" for c in s["rgb_triplet"]) for s in regions],
            "root_identifier_path": [s["structure_id_path"] for s in regions],
        }
    )
    (work / terminology.stub).parent.mkdir(parents=True, exist_ok=True)
    terms.to_csv(work / terminology.stub, index=False)
    location = f"/atlases/{name}/{version.replace('.', '_')}"
    meta = generate_metadata_dict(
        name=name.rsplit("_", 1)[0], location=location, citation="unpublished", atlas_link="http://localhost",
        species="Mus musculus", symmetric=hemispheres is None, resolution=(100, 100, 100), orientation="asr",
        version=version, shape=annotation.shape, additional_references=[], atlas_packager="cvplgraph tests",
        coordinate_space=space, terminology=terminology, annotation_set=annotation_info, template=template,
    )  # fmt: skip
    manifest = work / location.lstrip("/") / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(meta, indent=1))
    return manifest


def narrow(annotation: np.ndarray) -> np.ndarray:
    """Voxels of the regions :func:`structures` leaves out, given to their parents."""
    table = pd.read_csv(CCF / "structures.csv")
    moved = table[table["parent_structure_id"] > 65535]
    out = annotation.copy()
    for child, parent in zip(moved["id"], moved["parent_structure_id"].astype(np.int64)):
        out[annotation == child] = parent
    return out


def configure(config: Path, root: Path) -> None:
    """BrainGlobe's configuration file in ``config`` naming ``root`` as the BrainGlobe folder."""
    config.mkdir(parents=True, exist_ok=True)
    (config / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {root}\ninterm_download_dir = {root}\n")
