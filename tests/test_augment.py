"""Each batched augmentation, given fixed parameters, against torchvision's own per-image functional op."""

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mobilenet.data import augment as A
from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD

N = 6


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def per_image_reference(images: torch.Tensor, op, *params: torch.Tensor) -> torch.Tensor:
    return torch.stack([op(img, *[p[i].item() for p in params]) for i, img in enumerate(images)])


def smooth_images() -> torch.Tensor:
    """Linear ramps: bilinear resampling reproduces them exactly, so one resampling equals two."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    return torch.stack([torch.stack([xs, ys, (xs + ys) / 2]) * (0.5 + 0.1 * i) for i in range(N)])


def test_horizontal_flip(images):
    flip = torch.tensor([True, False, True, True, False, False])
    expected = torch.stack([TF.horizontal_flip(img) if f else img for img, f in zip(images, flip, strict=True)])
    assert torch.equal(A.horizontal_flip(images, flip), expected)


@pytest.mark.parametrize("mode", ("nearest", "bilinear"))
def test_rotation_matches_torchvision_rotate(images, mode):
    angle = torch.tensor([-10.0, -4.5, 0.0, 3.2, 7.0, 10.0])
    expected = per_image_reference(
        images, lambda img, a: TF.rotate(img, a, interpolation=v2.InterpolationMode(mode)), angle
    )
    assert torch.allclose(A.warp(images, A.rotation_inverse(angle), mode), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ("nearest", "bilinear"))
def test_shear_scale_matches_torchvision_affine(images, mode):
    angle = torch.tensor([0.0, 5.0, -3.0, 0.0, 8.0, -10.0])
    scale = torch.tensor([0.8, 1.2, 1.0, 0.93, 1.1, 0.85])
    shear = torch.tensor([10.0, -10.0, 4.0, -2.5, 0.0, 7.0])
    zeros = torch.zeros(N)

    def reference(img, a, s, sh):
        return TF.affine(img, a, [0.0, 0.0], s, [sh, 0.0], interpolation=v2.InterpolationMode(mode))

    expected = per_image_reference(images, reference, angle, scale, shear)
    actual = A.warp(images, A.inverse_affine(angle, scale, shear, zeros), mode)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_one_resampling_equals_the_tutorials_rotate_then_affine():
    images = smooth_images()
    angle = torch.tensor([-10.0, -6.0, -1.0, 2.0, 6.0, 10.0])
    scale = torch.tensor([0.8, 0.9, 1.0, 1.1, 1.2, 1.05])
    shear = torch.tensor([10.0, -7.0, 3.0, -10.0, 5.0, 0.0])
    zeros = torch.zeros(N)
    bilinear = v2.InterpolationMode.BILINEAR
    rotated = per_image_reference(images, lambda img, a: TF.rotate(img, a, interpolation=bilinear), angle)
    expected = per_image_reference(
        rotated, lambda img, s, sh: TF.affine(img, 0.0, [0.0, 0.0], s, [sh, 0.0], interpolation=bilinear), scale, shear
    )
    inverse = A.rotation_inverse(angle) @ A.inverse_affine(zeros, scale, shear, zeros)
    actual = A.warp(images, inverse, "bilinear")
    interior = (slice(None), slice(None), slice(8, 24), slice(8, 24))  # borders depend on where zeros enter
    # 1e-4 separates the tutorial's order from the reverse order (shear first), which is off by 5e-3 here.
    assert (actual[interior] - expected[interior]).abs().max() < 1e-4


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (A.adjust_brightness, TF.adjust_brightness),
        (A.adjust_contrast, TF.adjust_contrast),
        (A.adjust_saturation, TF.adjust_saturation),
    ],
)
def test_colour_ops_match_torchvision(images, ours, theirs):
    factor = torch.tensor([0.8, 0.9, 1.0, 1.05, 1.15, 1.2])
    assert torch.allclose(ours(images, factor), per_image_reference(images, theirs, factor), atol=1e-6)


def test_colour_jitter_applies_each_images_own_order(images):
    factors = torch.tensor([[0.8, 1.2, 0.9]] * N)
    orders = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    expected = []
    for img, factor, order in zip(images, factors, orders, strict=True):
        for op_index in order.tolist():
            img = ops[op_index](img, factor[op_index].item())
        expected.append(img)
    assert torch.allclose(A.colour_jitter(images, factors, orders), torch.stack(expected), atol=1e-6)


def test_padded_crop_matches_torchvision_pad_then_crop(images):
    top = torch.tensor([0, 8, 3, 4, 1, 7])
    left = torch.tensor([8, 0, 2, 4, 6, 5])
    expected = per_image_reference(images, lambda img, t, lft: TF.crop(TF.pad(img, [4]), t, lft, 32, 32), top, left)
    assert torch.equal(A.crop_with_padding(images, 4, top, left), expected)


@pytest.mark.parametrize("resolution", (24, 32, 64, 224))
def test_resize_matches_torchvision(images, resolution):
    expected = TF.resize(images, [resolution, resolution], antialias=True)
    assert torch.allclose(A.resize(images, resolution), expected, atol=1e-5)


def test_evaluation_transform_is_torchvisions_to_dtype_resize_normalize():
    uint8 = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8)
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Resize(64, antialias=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )
    transform = A.BatchTransform("seed", 64, CIFAR10_MEAN, CIFAR10_STD)
    assert torch.allclose(transform(uint8), reference(uint8), atol=1e-5)


@pytest.mark.parametrize("preset", ("seed", "standard", "cutout"))
def test_presets_keep_shape_and_dtype_and_draw_per_image(preset):
    same_image = torch.rand(1, 3, 32, 32).expand(16, -1, -1, -1).contiguous()
    out = A.AUGMENTATIONS[preset](same_image, torch.Generator().manual_seed(0))
    assert out.shape == same_image.shape and out.dtype == same_image.dtype
    distinct = {tuple(img.flatten()[::37].tolist()) for img in out}
    assert len(distinct) >= 12, f"only {len(distinct)} distinct results for 16 copies of one image"


@pytest.mark.parametrize("preset", ("seed", "standard", "cutout", "none"))
def test_augmentation_is_a_function_of_its_seed(preset, images):
    def run(seed):
        return A.AUGMENTATIONS[preset](images.clone(), torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    if preset != "none":
        assert not torch.equal(run(1), run(2))


def test_seed_preset_stays_in_the_unit_range():
    out = A.seed_augment(torch.rand(32, 3, 32, 32), torch.Generator().manual_seed(3))
    assert out.min() >= 0 and out.max() <= 1


def test_cutout_is_the_standard_crop_with_one_clipped_mean_coloured_square():
    images = torch.rand(64, 3, 32, 32) * 0.1 + 0.9  # far from the mean colour, so the square is easy to find
    standard = A.standard_augment(images, torch.Generator().manual_seed(5))
    out = A.cutout_augment(images, torch.Generator().manual_seed(5))
    changed = (out != standard).any(dim=1)  # (N, H, W)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1)
    areas = set()
    for image, mask in zip(out, changed, strict=True):
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "every image loses a square (its centre lies inside the image)"
        # one solid rectangle of at most 16 × 16, touching the border whenever it is smaller
        assert mask.sum() == len(rows) * len(cols) and len(rows) <= 16 and len(cols) <= 16
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31
        assert len(cols) == 16 or cols[0] == 0 or cols[-1] == 31
        assert torch.allclose(image[:, mask], mean.expand(3, int(mask.sum())))
        areas.add(int(mask.sum()))
    assert 256 in areas and len(areas) > 5, "squares are whole inside the image and clipped at its border"


@pytest.mark.parametrize("mean", (CIFAR10_MEAN, (0.5071, 0.4865, 0.4409)), ids=("cifar10", "cifar100"))
def test_cutout_square_is_zero_after_normalisation(mean):
    transform = A.BatchTransform("cutout", 32, mean, CIFAR10_STD)
    out = transform(torch.full((8, 3, 32, 32), 255, dtype=torch.uint8), torch.Generator().manual_seed(0))
    zeros = (out.abs() < 1e-6).all(dim=1)
    assert all(0 < int(z.sum()) <= 256 for z in zeros)
