"""Random-access data sources: prepare a builder once, then `tfds` array_record reads."""

import os

from absl import logging
import tensorflow_datasets as tfds

from mi_jax.data import builders


def resolve(data_config):
  """(builder class, its kwargs) for config.data; raises ValueError naming config.data.name."""
  name, _, config_name = data_config.name.partition('/')
  if name not in builders.BUILDERS:
    raise ValueError(
        f'config.data.name={data_config.name!r}: unknown dataset; known: '
        f'{", ".join(sorted(builders.BUILDERS))} (demo ones take /private or /public)'
    )
  cls = builders.BUILDERS[name]
  kwargs = dict(data_dir=os.path.expanduser(data_config.data_dir), file_format='array_record')
  if cls is builders.ImageFolder:
    if not config_name:
      raise ValueError(f'config.data.name={data_config.name!r}: name the folder data set, e.g. image_folder/ffhq')
    kwargs['config'] = builders.ImageFolderConfig(name=config_name, test_fraction=data_config.get('test_fraction', 0.0))
  elif cls.BUILDER_CONFIGS:
    valid = [c.name for c in cls.BUILDER_CONFIGS]
    if config_name not in valid:
      raise ValueError(f'config.data.name={data_config.name!r}: expected one of {[f"{name}/{v}" for v in valid]}')
    kwargs['config'] = config_name
  elif config_name:
    raise ValueError(f'config.data.name={data_config.name!r}: {name} has no configs')
  return cls, kwargs


def get_builder(data_config) -> tfds.core.DatasetBuilder:
  """The builder that config.data names (`facescrub`, `mnist_demo/private`, `image_folder/ffhq`)."""
  cls, kwargs = resolve(data_config)
  return cls(**kwargs)


def prepare(data_config) -> tfds.core.DatasetBuilder:
  """Returns the builder, writing its array_record files first if they are missing."""
  builder = get_builder(data_config)
  if builder.is_prepared():
    return builder
  name = data_config.name.partition('/')[0]
  download_config = None
  if name in builders.MANUAL_BUILDERS:
    manual_dir = os.path.expanduser(data_config.manual_dir or '')
    if not manual_dir or not os.path.isdir(manual_dir):
      raise FileNotFoundError(
          f'config.data.manual_dir={data_config.manual_dir!r} is not a directory, and {data_config.name} '
          f'is not prepared yet in config.data.data_dir={data_config.data_dir!r}.'
          f'{builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  logging.info('Preparing %s into %s', data_config.name, builder.data_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  label = builder.info.features['label']
  if isinstance(label, tfds.features.ClassLabel):
    return label.num_classes
  return len(builder.info.metadata['class_names'])


def get_source(builder: tfds.core.DatasetBuilder, split: str):
  if split not in builder.info.splits:
    raise ValueError(f'split {split!r} is not in {builder.info.full_name}; it has {sorted(builder.info.splits)}')
  return builder.as_data_source(split=split)
