"""fer.train.options: every TrainConfig field is an option, typed from its annotation, helped by its docstring."""

from dataclasses import dataclass, fields

import pytest

from fer.cache.errors import FerError
from fer.train.config import TrainConfig
from fer.train.options import config_from_options, config_options, option, parse_grid


def test_every_field_has_an_option_with_its_docstring():
    opts = {o.name: o for o in config_options()}
    assert list(opts) == [f.name for f in fields(TrainConfig)]
    assert all(o.help for o in opts.values())
    assert opts["folds"].flags == ("--fold",) and opts["modalities"].flags == ("--modalities", "-m")
    assert (opts["lr"].kind == "float" and opts["audio_layer"].kind == "parsed"
            and opts["audio_layer"].parse("weighted") == "weighted" and opts["augment"].kind == "tuple")
    assert opts["balance"].kind == "bool" and not opts["balance"].sweepable and opts["segments"].sweepable
    assert opts["epochs"].help == "Maximum number of epochs per fold." and opts["epochs"].default == 30
    assert opts["augment"].default == "none" and opts["modalities"].default == "face"
    # written for the command line, not as Python
    assert opts["face"].help.startswith("Feature-set spec for the face (default: the store's only")
    assert not any("``" in o.help or "None:" in o.help for o in opts.values())


def test_a_new_field_becomes_an_option():
    @dataclass
    class Extended(TrainConfig):
        warmup: int = 0
        """Epochs of linear learning-rate warm-up."""

    o = {x.name: x for x in config_options(Extended)}["warmup"]
    assert o.flags == ("--warmup",) and o.kind == "int" and o.help == "Epochs of linear learning-rate warm-up."
    assert o.sweepable and o.parse_list("0,2") == [0, 2]


def test_values_from_text():
    cfg = config_from_options({"modalities": "face,audio", "folds": "all", "augment": "jitter,flip", "fusion": "fc",
                               "audio_layer": None, "out": None, "balance": True})
    assert cfg.modalities == ("face", "audio") and cfg.folds == () and cfg.augment == ("jitter", "flip") and cfg.balance
    assert option("audio_layer").parse("last") is None and option("normalize").parse("no") is False
    with pytest.raises(FerError, match="--segments 'x' is not an integer"):
        option("segments").parse("x")
    grid, single = parse_grid({"augment": "none;jitter;jitter,flip", "segments": "8,16", "lr": "1e-3", "loss": None})
    assert grid == {"augment": [(), ("jitter",), ("jitter", "flip")], "segments": [8, 16]} and single == {"lr": 1e-3}
    with pytest.raises(FerError, match="cannot sweep over 'device'"):
        parse_grid({"device": "cpu,cuda"})
