"""fer.extract.config: ExtractConfig and FacesConfig, validated in one place (which option applies to which
modality, the run's counts, the one frame parser), and the build arguments a feature set records."""

from dataclasses import fields

import pytest

from fer.cache.errors import FerError
from fer.extract.backbones.registry import extractor_from_provenance, make_extractor
from fer.extract.config import (
    APPLIES_TO,
    BUILD_FIELDS,
    MODALITIES,
    ExtractConfig,
    FacesConfig,
    extract_config,
    extract_options,
    faces_config,
    faces_options,
    parse_frames,
)
from fer.options import field_docs

VALUE = {"--frames all": ("frames", "all"), "--max-frames": ("max_frames", 8), "--flip": ("flip", True),
         "--layer": ("layer", "layer3"), "--size": ("size", 64), "--frames": ("frames", 4),
         "--transforms": ("transforms", "IMAGENET1K_V1")}
"""A value of each option of APPLIES_TO."""
NOT_APPLICABLE = [(flag, m) for flag, mods in APPLIES_TO.items() for m in MODALITIES if m not in mods]


def one_line_error(fn, *words):
    with pytest.raises(FerError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_every_field_has_a_docstring_and_an_option():
    for cls, options in ((ExtractConfig, extract_options), (FacesConfig, faces_options)):
        docs = field_docs(cls)
        names = [f.name for f in fields(cls)]
        assert set(docs) == set(names) and all(docs.values()), cls
        assert [o.name for o in options()] == names and all(o.help for o in options())
    opts = {o.name: o for o in extract_options()}
    assert opts["modality"].required and opts["modality"].flags == ("--modality", "-m")
    assert opts["frames"].kind == "parsed" and opts["chunk_mb"].kind == "float?"
    assert opts["progress"].default is True
    assert set(BUILD_FIELDS) <= set(opts)


@pytest.mark.parametrize("flag, modality", NOT_APPLICABLE)
def test_an_option_that_does_not_apply_to_the_modality_is_one_line_everywhere(flag, modality):
    field, value = VALUE[flag]
    cfg = ExtractConfig(modality=modality, **{field: value})
    msg = one_line_error(cfg.validate, flag.split()[0], "only", f"leave it out for {modality}")
    # the library's entry point asks the same rules and says the same
    assert one_line_error(lambda: make_extractor(modality, None, "none", "cpu", **{field: value})) == msg


def test_several_options_are_named_together_and_the_rules_are_the_config_s():
    msg = one_line_error(ExtractConfig(modality="audio", size=64, frames=8).validate,
                         "--size and --frames apply to face and pose only; leave them out for audio")
    assert "each clip's sound" in msg
    one_line_error(ExtractConfig(modality="pose", frames="all", max_frames=4).validate,
                   "--frames all and --max-frames apply to the face modality only")
    ExtractConfig(modality="pose", size=64, frames=3).validate()  # what pose takes
    ExtractConfig(modality="face", layer="layer3", frames="all", max_frames=8, flip=True, size=64).validate()


@pytest.mark.parametrize("values, says", [
    ({"modality": "smell"}, "unknown modality 'smell'"),
    ({"modality": "face", "limit": 0}, "--limit must be >= 1"),
    ({"modality": "face", "batch_size": 0}, "--batch-size must be >= 1"),
    ({"modality": "face", "workers": -1}, "--workers must be >= 0"),
    ({"modality": "face", "chunk_mb": 0.0}, "--chunk-mb must be > 0"),
    ({"modality": "face", "shard": "3/2"}, "--shard 3/2"),
    ({"modality": "face", "size": 16}, "--size must be between 32 and 1024"),
    ({"modality": "face", "format": "tar"}, "unknown --format 'tar'"),
    ({"modality": "face", "store": "x.zarr", "format": "h5"}, "does not match --format"),
    ({"modality": "face", "frames": "16", "max_frames": "8"}, "--max-frames caps --frames all"),
    ({"modality": "face", "frames": "all", "max_frames": "0"}, "--max-frames must be >= 1"),
    ({"modality": "face", "frames": "some"}, "neither 'all' nor a positive number"),
])
def test_bad_settings_are_one_line_errors_naming_the_option(values, says):
    one_line_error(lambda: extract_config(values), says)


def test_one_frame_parser():
    assert parse_frames("all") == parse_frames(" ALL ") == "all"
    assert parse_frames("16") == parse_frames(16) == 16
    for bad in ("some", "0", -2, "1.5"):
        one_line_error(lambda bad=bad: parse_frames(bad), "--frames", "neither 'all' nor a")
    assert extract_config({"modality": "face", "frames": "all"}).frames == "all"
    assert faces_config({}).frame_count is None and faces_config({"frames": "12"}).frame_count == 12


def test_faces_settings():
    for values, says in [({"size": 8}, "--size"), ({"frames": "x"}, "--frames"), ({"batch": 0}, "--batch"),
                         ({"workers": -1}, "--workers"), ({"shard": "1-2"}, "--shard")]:
        one_line_error(lambda values=values: faces_config(values), says)


def test_the_feature_set_records_the_config_s_build_arguments():
    cfg = extract_config({"modality": "face", "weights": "none", "size": "32", "frames": "all",
                          "max_frames": "6", "flip": True, "precision": "fp32", "device": "cpu"})
    ex = make_extractor(device=cfg.device, **cfg.build_args())
    assert ex.build_args == {**cfg.build_args(), "backbone": "resnet18"}  # the default backbone, as resolved
    again = ExtractConfig(**ex.build_args).validate()  # what the store records is an ExtractConfig's fields
    assert again.build_args() == ex.build_args
    assert extractor_from_provenance({"extractor": ex.build_args}, "cpu").spec == ex.spec
    mel_cfg = extract_config({"modality": "audio", "backbone": "mel", "device": "cpu"})
    mel = make_extractor(device=mel_cfg.device, **mel_cfg.build_args())
    assert set(mel.build_args) <= set(BUILD_FIELDS)


@pytest.mark.parametrize("values, says", [
    ({"modality": "audio", "backbone": "mel", "weights": "x.pt"},
     "--weights x.pt does not apply to mel: the mel audio backend has no weights; leave --weights out"),
    ({"modality": "audio", "backbone": "mel", "precision": "bf16"}, "mel audio backend runs in fp32 only"),
    ({"modality": "pose", "precision": "fp16"},
     "--precision fp16 does not apply to keypointrcnn: the pose backends run in fp32 only"),
    ({"modality": "pose", "backbone": "openpifpaf", "size": 256}, "--size 256 does not apply to openpifpaf"),
    ({"modality": "face", "layer": "layer9"}, "unknown --layer 'layer9' for resnet18; choose from pool, layer3"),
    ({"modality": "audio", "backbone": "timm:vit_tiny_patch16_224"}, "is an image model"),
])
def test_what_a_family_takes_is_read_from_its_record_in_the_table(values, says):
    one_line_error(lambda: extract_config(values), says)
    args = {k: v for k, v in values.items() if k not in ("modality", "backbone", "weights")}
    with pytest.raises(FerError, match=says.split(":")[0].split(";")[0]):  # the library says it too
        make_extractor(values["modality"], values.get("backbone"), values.get("weights", "none"), "cpu", **args)
    extract_config({"modality": "audio", "backbone": "mel", "weights": "none", "precision": "auto"})


def test_a_toy_family_s_record_says_what_it_takes():
    from fer.extract.backbones.families import family_of, register, unregister
    from fer.extract.backbones.family import Family
    from fer.extract.config import check_family

    toy = register(Family(name="toy-cfg", modalities=("audio",), pattern="toycfg", help="toycfg",
                          build=lambda *a, **k: None, spec="audio.toycfg",
                          only=(("weights", None, "it computes, it learns nothing"),
                                ("precision", "fp32", "fp32 only"))))
    try:
        assert family_of("audio", "toycfg") is toy
        one_line_error(lambda: extract_config({"modality": "audio", "backbone": "toycfg", "weights": "w.pt"}),
                       "--weights w.pt does not apply to toycfg: it computes, it learns nothing; leave --weights out")
        one_line_error(lambda: check_family(toy, "toycfg", precision="bf16"), "--precision bf16", "fp32 only")
        check_family(toy, "toycfg", precision="auto", seed=0)
    finally:
        unregister("toy-cfg")
