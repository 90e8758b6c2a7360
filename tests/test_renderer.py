"""A lighter renderer for texture synthesis, distilled from a texture file's own networks
(tools/renderer.py), and the network shapes a texture file stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aeic_codec.cli.app import main
from aeic_codec.codec.texture_synthesis import (
    TextureFileError,
    load_texture,
    save_texture,
    texture_provenance,
)
from aeic_codec.format.texture_coder import TextureLevels
from aeic_codec.nn.config import AEIC_SMALL_TAEF2, TinyEncoderConfig
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder
from aeic_codec.tools.renderer import STUDENT_ENCODER, distil_renderer, student_decoder

from .conftest import make_image, photo_folder
from .test_texture import small_synthesis


def test_the_student_networks_keep_the_latent_and_picture_sizes():
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        latent = TinyEncoder(STUDENT_ENCODER).eval()(x)
        assert latent.shape == (1, 32, 8, 12)
        picture = TinyDecoder(student_decoder(AEIC_SMALL_TAEF2)).eval()(latent)
    assert picture.shape == (1, 3, 64, 96)
    teacher = sum(p.numel() for p in TinyDecoder(AEIC_SMALL_TAEF2).parameters())
    student = sum(p.numel() for p in TinyDecoder(student_decoder(AEIC_SMALL_TAEF2)).parameters())
    assert student < teacher / 2


def test_tiny_encoder_config_is_checked_and_round_trips():
    assert TinyEncoderConfig.from_json(STUDENT_ENCODER.to_json()) == STUDENT_ENCODER
    with pytest.raises(ValueError, match="4 levels"):
        TinyEncoderConfig(widths=(16, 32, 64))
    with pytest.raises(ValueError, match="positive"):
        TinyEncoderConfig(widths=(16, 0, 32, 64))
    with pytest.raises(ValueError, match="not a tiny encoder configuration"):
        TinyEncoderConfig.from_json('{"widths": [1, 2, 3, 4], "depth": 2}')


def test_a_student_texture_file_round_trips_and_a_format_2_file_still_loads(tmp_path):
    teacher = small_synthesis()
    torch.manual_seed(1)
    encoder = TinyEncoder(STUDENT_ENCODER).eval()
    student = type(teacher)(
        encoder,
        TinyDecoder(student_decoder(teacher.config)).eval(),
        teacher.book,
        student_decoder(teacher.config),
    )
    path = tmp_path / "student.safetensors"
    save_texture(path, student, {"renderer": {"steps": 1}})
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["aeic_texture"] == "3"
    assert TinyEncoderConfig.from_json(meta["encoder_config"]) == STUDENT_ENCODER
    loaded = load_texture(path)
    assert loaded.encoder.config == STUDENT_ENCODER
    assert texture_provenance(path) == {"renderer": {"steps": 1}}
    picture = make_image(64, 96, seed=5).astype(np.float32)
    levels = TextureLevels(64, 3, np.arange(4, dtype=np.int16).reshape(2, 1, 2))
    assert np.allclose(loaded.detail(picture, levels), student.detail(picture, levels), atol=0.5)
    # A file of the previous format: TAEF2's encoder, its shape not stored.
    taef2 = tmp_path / "taef2.safetensors"
    save_texture(taef2, teacher)
    old = tmp_path / "format2.safetensors"
    with safe_open(str(taef2), "pt") as fh:
        meta = dict(fh.metadata())
    del meta["encoder_config"]
    save_file(load_file(str(taef2)), str(old), metadata=dict(meta, aeic_texture="2"))
    assert load_texture(old).encoder.config == TinyEncoderConfig()
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(taef2)), str(bad), metadata=dict(meta, encoder_config="[1]"))
    with pytest.raises(TextureFileError, match="malformed network shapes"):
        load_texture(bad)


def test_distillation_learns_and_resumes(tmp_path):
    photos = photo_folder(tmp_path / "photos")
    teacher = small_synthesis()
    losses: list[float] = []
    ck = tmp_path / "state.pt"
    kw = {"batch": 2, "crop": 64, "checkpoint": ck}
    made = distil_renderer(teacher, photos, 30, progress=lambda s, n, v: losses.append(v), **kw)
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert made.book is teacher.book and made.encoder.config == STUDENT_ENCODER
    # The finished state resumes to the same networks without another step.
    again = distil_renderer(teacher, photos, 30, progress=lambda *a: losses.append(0), **kw)
    assert len(losses) == 30
    for net, other in ((made.encoder, again.encoder), (made.decoder, again.decoder)):
        for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other networks or another number of steps"):
        distil_renderer(teacher, photos, 31, **kw)
    with pytest.raises(ValueError, match="no photograph of at least 128x128"):
        distil_renderer(teacher, photos[:1], 2, crop=128)


def test_texture_renderer_command_writes_a_lighter_copy_with_the_same_book(tmp_path):
    photo_folder(tmp_path / "photos", size=(160, 192))
    source = tmp_path / "taef2.safetensors"
    save_texture(source, small_synthesis(), {"photos": 186})
    out = tmp_path / "out.safetensors"
    args = ["weights", "texture-renderer", str(source), "-o", str(out)]
    args += ["--photos", str(tmp_path / "photos"), "--steps", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    made = load_texture(out)
    assert made.encoder.config == STUDENT_ENCODER
    assert made.config.vae_widths == student_decoder(AEIC_SMALL_TAEF2).vae_widths
    assert torch.equal(made.book.keys, load_texture(source).book.keys)
    renderer = {"from": "taef2.safetensors", "photos": 3, "steps": 2}
    assert texture_provenance(out) == {"photos": 186, "renderer": renderer}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists" in again.output
    missing = CliRunner().invoke(main, [*args[:2], str(tmp_path / "none.safetensors"), *args[3:]])
    assert missing.exit_code == 2 and "does not exist" in missing.output
