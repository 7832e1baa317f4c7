"""PyTC configs merged with yacs's rules (service.pytc.config), without yacs."""

from __future__ import annotations

import pytest

from service.errors import SpecError
from service.pytc.config import load_pytc_config, pytc_defaults


def test_defaults_are_pytc_v1s_tree() -> None:
    tree = pytc_defaults()
    assert tree["INFERENCE"]["BLENDING"] == "gaussian" and tree["INFERENCE"]["STRIDE"] == [4, 128, 128]
    assert tree["MODEL"]["FILTERS"] == [28, 36, 48, 64, 80] and tree["DATASET"]["PAD_SIZE"] == [2, 64, 64]
    assert tree["AUGMENTOR"]["ROTATE"]["ENABLED"] is True and tree["MODEL"]["LABEL_EROSION"] is None


def test_experiment_over_base_over_defaults_then_overrides() -> None:
    base = "MODEL:\n  FILTERS: [8, 16]\n  OUT_PLANES: 2\nINFERENCE:\n  STRIDE: [1, 2, 2]\n"
    experiment = "MODEL:\n  OUT_PLANES: 3\n"
    cfg = load_pytc_config(
        [("b", base), ("e", experiment)], ["INFERENCE.STRIDE", "[2, 4, 4]", "SOLVER.BASE_LR", "0.5"]
    )
    assert cfg.get("MODEL.FILTERS") == [8, 16] and cfg.get("MODEL.OUT_PLANES") == 3
    assert cfg.get("INFERENCE.STRIDE") == [2, 4, 4] and cfg.get("SOLVER.BASE_LR") == 0.5
    assert cfg.get("MODEL.IN_PLANES") == 1  # untouched default
    assert set(cfg.changed()) == {"MODEL.FILTERS", "MODEL.OUT_PLANES", "INFERENCE.STRIDE", "SOLVER.BASE_LR"}


@pytest.mark.parametrize(
    ("texts", "overrides", "field"),
    [
        ([("b", "MODEL:\n  NOT_A_KEY: 1\n")], [], "MODEL.NOT_A_KEY"),
        ([("b", "NOPE:\n  X: 1\n")], [], "NOPE"),
        ([("b", "")], ["MODEL.NOPE", "1"], "MODEL.NOPE"),
        ([("b", "")], ["NOPE.X", "1"], "NOPE"),
        ([("b", "")], ["MODEL.FILTERS"], "overrides"),  # an odd number of items
        ([("b", "SOLVER:\n  BASE_LR: 1\n")], [], "SOLVER.BASE_LR"),  # int for a float: yacs refuses
        ([("b", "MODEL:\n  IN_PLANES: two\n")], [], "MODEL.IN_PLANES"),
        ([("b", "MODEL: 3\n")], [], "MODEL"),
        ([("b", "MODEL: [1\n")], [], "b"),  # YAML that does not parse names the file
    ],
)
def test_what_yacs_refuses_is_refused_naming_the_key(
    texts: list[tuple[str, str]], overrides: list[str], field: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_pytc_config(texts, overrides)
    assert caught.value.field.split(":")[0] == field  # a YAML error adds the line and column


def test_values_decode_as_yacs_decodes_them() -> None:
    text = "MODEL:\n  FILTERS: '[4, 8]'\n  ISOTROPY: (true, false)\nINFERENCE:\n  OUTPUT_NAME: result\n"
    cfg = load_pytc_config([("b", text.replace("(true, false)", "[True, False]"))])
    assert cfg.get("MODEL.FILTERS") == [4, 8]  # a string holding a literal is that literal
    assert cfg.get("INFERENCE.OUTPUT_NAME") == "result"  # text that is no literal stays text
    tuples = load_pytc_config([("b", "SOLVER:\n  STEPS: [10, 20, 30]\n")])
    assert tuples.get("SOLVER.STEPS") == [10, 20, 30]  # a list replaces a tuple
    none = load_pytc_config([("b", "MODEL:\n  LABEL_EROSION: 2\n")], ["INFERENCE.AUG_NUM", "None"])
    assert none.get("MODEL.LABEL_EROSION") == 2 and none.get("INFERENCE.AUG_NUM") is None


def test_an_earlier_files_type_binds_the_next_as_in_yacs() -> None:
    """SNEMI-Base sets LABEL_EROSION: 1 and SNEMI-Affinity-UNet-MER a list: yacs refuses the pair."""
    with pytest.raises(SpecError, match="type mismatch") as caught:
        load_pytc_config([("b", "MODEL:\n  LABEL_EROSION: 1\n"), ("e", "MODEL:\n  LABEL_EROSION: [1, 2]\n")])
    assert caught.value.field == "MODEL.LABEL_EROSION"


def test_inference_puts_inference_values_over_dataset_and_model() -> None:
    text = (
        "DATASET:\n  IMAGE_NAME: train.h5\n  PAD_SIZE: [1, 2, 2]\n"
        "MODEL:\n  INPUT_SIZE: [5, 9, 9]\n"
        "INFERENCE:\n  IMAGE_NAME: test.h5\n  INPUT_SIZE: [7, 9, 9]\n"
        "  PAD_SIZE: [3, 3, 3]\n  OUTPUT_NAME: out\n"
    )
    training = load_pytc_config([("b", text)])
    assert training.get("DATASET.IMAGE_NAME") == "train.h5" and training.get("MODEL.INPUT_SIZE") == [5, 9, 9]
    inference = load_pytc_config([("b", text)], inference=True)
    assert inference.get("DATASET.IMAGE_NAME") == "test.h5" and inference.get("MODEL.INPUT_SIZE") == [7, 9, 9]
    assert (
        inference.get("DATASET.PAD_SIZE") == [3, 3, 3] and inference.get("INFERENCE.OUTPUT_NAME") == "out.h5"
    )


def test_config_texts_are_bounded_as_job_documents() -> None:
    """A YAML alias bomb or an integer of more digits than Python converts is a SpecError on the
    file, built no further (the texts come from requests too)."""
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
    )
    for text in (bomb, "1" * 5000):
        with pytest.raises(SpecError) as caught:
            load_pytc_config([("base", text)])
        assert caught.value.field == "base"
