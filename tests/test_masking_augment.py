import pytest
import torch

from maskmatch_hf.augment import cutmix, cutmix_box_mask, strong_augment
from maskmatch_hf.masking import mask_images, random_patch_mask

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def natural_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Normalized images whose pixels lie in the valid [0, 1] RGB range."""
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("ratio", "height", "width", "patch"), [(0.7, 64, 64, 16), (0.3, 50, 70, 16), (0.5, 96, 32, 32)]
)
def test_mask_ratio_is_honoured_per_image(ratio, height, width, patch):
    mask = random_patch_mask(5, height, width, patch, ratio, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (5, height, width)
    rows, cols = -(-height // patch), -(-width // patch)
    per_patch = mask[:, ::patch, ::patch]
    assert per_patch.shape == (5, rows, cols)
    assert per_patch.flatten(1).sum(1).tolist() == [round(ratio * rows * cols)] * 5
    # every pixel of a patch shares the patch's state
    expanded = per_patch.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :height, :width]
    assert torch.equal(mask, expanded)
    assert not torch.equal(mask[0], mask[1])


def test_hidden_pixels_are_zero_in_normalized_space():
    images = natural_images(2, 32, 32)
    mask = random_patch_mask(2, 32, 32, 8, 0.7, generator=torch.Generator().manual_seed(0))
    masked = mask_images(images, mask)
    assert torch.all(masked.permute(0, 2, 3, 1)[mask] == 0)
    assert torch.equal(masked.permute(0, 2, 3, 1)[~mask], images.permute(0, 2, 3, 1)[~mask])


def test_cutmix_mixes_images_labels_and_confidences_with_one_box():
    generator = torch.Generator().manual_seed(3)
    box = cutmix_box_mask(6, 40, 48, prob=1.0, generator=generator)
    assert box.any(dim=(1, 2)).all()
    images, partner_images = torch.randn(6, 3, 40, 48), torch.randn(6, 3, 40, 48)
    labels, partner_labels = torch.zeros(6, 40, 48, dtype=torch.long), torch.ones(6, 40, 48, dtype=torch.long)
    conf, partner_conf = torch.full((6, 40, 48), 0.2), torch.full((6, 40, 48), 0.9)
    mixed_images = cutmix(box, images, partner_images)
    mixed_labels = cutmix(box, labels, partner_labels)
    mixed_conf = cutmix(box, conf, partner_conf)
    from_partner = (mixed_images == partner_images).all(dim=1) & (mixed_images != images).all(dim=1)
    assert torch.equal(from_partner, box)
    assert torch.equal(mixed_labels == 1, box)
    assert torch.equal(mixed_conf == 0.9, box)
    # boxes are rectangles covering 2-40% of the image
    area = box.float().mean(dim=(1, 2))
    assert (area <= 0.41).all() and (area >= 0.005).all()
    assert not cutmix_box_mask(6, 40, 48, prob=0.0, generator=generator).any()


def test_strong_augment_is_photometric_reproducible_and_switchable():
    images = natural_images(4, 32, 32)
    unchanged = strong_augment(images, MEAN, STD, color_jitter_prob=0, grayscale_prob=0, blur_prob=0)
    torch.testing.assert_close(unchanged, images, atol=1e-5, rtol=0)
    first = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(7))
    again = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and first.shape == images.shape
    assert (first - images).abs().amax(dim=(1, 2, 3)).min() > 0.01
    gray = strong_augment(images, MEAN, STD, color_jitter_prob=0, grayscale_prob=1, blur_prob=0)
    rgb = gray * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb[:, 0], rgb[:, 1], atol=1e-5, rtol=0)
    blurred = strong_augment(images, MEAN, STD, color_jitter_prob=0, grayscale_prob=0, blur_prob=1)
    assert blurred.std() < images.std()


def test_hue_rotates_both_ways_within_its_strength(monkeypatch):
    import maskmatch_hf.augment as augment

    turns_seen = []
    original = augment.rotate_hue
    monkeypatch.setattr(
        augment, "rotate_hue", lambda images, turns: turns_seen.append(turns) or original(images, turns)
    )
    strong_augment(
        natural_images(256, 8, 8),
        MEAN,
        STD,
        color_jitter=(0.0, 0.0, 0.0, 0.25),
        color_jitter_prob=1.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    (turns,) = turns_seen
    assert turns.abs().max() <= 0.25 and (turns != 0).all()
    assert (turns < -0.1).sum() > 50 and (turns > 0.1).sum() > 50
