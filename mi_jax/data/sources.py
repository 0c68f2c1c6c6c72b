"""Random-access data sources: prepare a builder once, then `tfds` array_record reads."""

import os
import shutil

from absl import logging
import tensorflow_datasets as tfds

from mi_jax import multihost
from mi_jax.data import builders


def resolve(data_config):
  """(builder class, its kwargs) for config.data; raises ValueError naming config.data.name."""
  name, _, config_name = data_config.name.partition('/')
  if name not in builders.BUILDERS:
    raise ValueError(
        f'config.data.name={data_config.name!r}: unknown dataset; known: '
        f'{", ".join(sorted(builders.BUILDERS))} (demo ones take /private or /public)'
    )
  for field, choices in (('bad_images', builders.BAD_IMAGE_POLICIES), ('prepare_on', PREPARE_ON)):
    value = data_config.get(field, choices[0])
    if value not in choices:
      raise ValueError(f'config.data.{field}={value!r}: expected one of {choices}')
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


# Where a data set is prepared in a multi-process job (config.data.prepare_on): by process 0 into a
# data_dir every host shares, or by the first process of every host into host-local disks.
PREPARE_ON = ('process_0', 'each_host')


def prepare(data_config) -> tfds.core.DatasetBuilder:
  """Returns the builder, writing its array_record files first if they are missing.

  In a multi-process job one process prepares (per host with config.data.prepare_on='each_host')
  while the others wait. A prepared real data set whose manual_dir no longer holds the files it was
  built from is refused, naming the differences, or rebuilt with config.data.rebuild_if_changed.
  """
  multihost.run_once(
      f'prepare {data_config.name}',
      lambda: _prepare(data_config),
      per_host=data_config.get('prepare_on', 'process_0') == 'each_host',
  )
  return get_builder(data_config)


def _manual_dir(data_config) -> str:
  return os.path.expanduser(data_config.get('manual_dir') or '')


def _prepare(data_config):
  builder = get_builder(data_config)
  name = data_config.name.partition('/')[0]
  manual = name in builders.MANUAL_BUILDERS
  if builder.is_prepared():
    if manual and os.path.isdir(_manual_dir(data_config)) and _source_changes(builder, data_config):
      shutil.rmtree(builder.data_dir)  # _source_changes refused unless config.data.rebuild_if_changed
      builder = get_builder(data_config)
    else:
      return
  download_config = None
  if manual:
    manual_dir = _manual_dir(data_config)
    if not manual_dir or not os.path.isdir(manual_dir):
      raise builders.MissingDataError(
          f'config.data.manual_dir={data_config.manual_dir!r} is not a directory, and {data_config.name} '
          f'is not prepared yet in config.data.data_dir={data_config.data_dir!r}.'
          f'{builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.bad_images = data_config.get('bad_images', 'fail')
  logging.info('Preparing %s into %s', data_config.name, builder.data_dir)
  builder.download_and_prepare(download_config=download_config)


def _source_changes(builder, data_config) -> bool:
  """True when the prepared `builder` was built from other files than manual_dir holds now and
  config.data.rebuild_if_changed allows a rebuild; a DataError naming the differences when it does not."""
  built = builder.info.metadata.get('source_files')
  if built is None:  # prepared before source files were recorded
    return False
  root = _manual_dir(data_config)
  _, samples, list_files = builder.list_samples(root)
  now = builders.source_files(root, [path for path, _ in samples] + list_files)
  if now == built:
    return False
  added, removed = sorted(set(now) - set(built)), sorted(set(built) - set(now))
  resized = sorted(f for f in set(now) & set(built) if now[f] != built[f])
  summary = '; '.join(
      f'{len(files)} {what}: {", ".join(files[:5])}{" ..." if len(files) > 5 else ""}'
      for what, files in (('added', added), ('removed', removed), ('changed size', resized))
      if files
  )
  if data_config.get('rebuild_if_changed', False):
    logging.warning('Rebuilding %s: %s changed since it was prepared (%s)', builder.data_dir, root, summary)
    return True
  raise builders.DataError(
      f'{data_config.name} in {builder.data_dir} was prepared from other files than '
      f'config.data.manual_dir={data_config.manual_dir!r} holds now ({summary}). Set '
      '--config.data.rebuild_if_changed=True to rebuild it, or a new config.data.data_dir to keep both.'
  )


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  label = builder.info.features['label']
  if isinstance(label, tfds.features.ClassLabel):
    return label.num_classes
  return len(builder.info.metadata['class_names'])


def get_source(builder: tfds.core.DatasetBuilder, split: str):
  if split not in builder.info.splits:
    raise ValueError(f'split {split!r} is not in {builder.info.full_name}; it has {sorted(builder.info.splits)}')
  return builder.as_data_source(split=split)
