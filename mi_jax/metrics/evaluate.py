"""Evaluate a finished attack: attack accuracy, KNN distances, FID and the false-positive record.

Reads an attack workdir (`final/class_<c>.npz`, `attack.json`) and writes next to it
  evaluation.json   attack accuracy top-1/top-5 (evaluation model), KNN distance with the
                    evaluation model's penultimate features and, given its weight file, with
                    FaceNet; FID (pytorch-fid's Inception given its weight file, otherwise the
                    evaluation model's features -- the field `fid_features` says which);
  evaluation.npz    per final image: target class, the target's final-selection confidence and
                    the evaluation model's logits (for the false-positive analysis).

Private reference images are the *training* split of the target's data set, classes attacked
only (PPA: metrics/distance_metrics.py, metrics/fid_score.py). Their features do not depend on
the attack, so `cache_dir` keeps them between evaluations (the reproduce job shares one).

FID inputs: pytorch-fid's network expects [0, 1] images and maps them to [-1, 1]. Our images
are in [-1, 1] and go in as they are (standard FID); `fid_quirk=True` repeats PPA's extra
2x - 1 (inputs in [-3, 1]) so that numbers are comparable with PPA's (reference/ppa.md 1.6).
"""

import glob
import hashlib
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mi_jax.attacks import ppa, transforms
from mi_jax.convert import eval_models
from mi_jax.data import pipeline, sources
from mi_jax.metrics import scores as scores_lib
from mi_jax.models import inception, layers
from mi_jax.train import reporting


class EvaluationError(ValueError):
  """An attack workdir or evaluation input that cannot be evaluated."""


def load_final_images(attack_workdir: str):
  """{size: uint8 [N, S, S, C]}, targets [N], target confidences [N] of the final selection."""
  paths = sorted(glob.glob(os.path.join(attack_workdir, 'final', 'class_*.npz')))
  if not paths:
    raise EvaluationError(f'{attack_workdir} holds no final images (final/class_*.npz): run the attack first')
  images, targets, confidences = {}, [], []
  for path in paths:
    with np.load(path) as f:
      cls = int(os.path.basename(path)[len('class_'):-len('.npz')])
      for key in f.files:
        if key.startswith('images_'):
          images.setdefault(int(key[len('images_'):]), []).append(f[key])
      targets.append(np.full(len(f['scores']), cls))
      confidences.append(f['scores'])
  return {s: np.concatenate(v) for s, v in images.items()}, np.concatenate(targets), np.concatenate(confidences)


def _to_float(images_uint8):
  return images_uint8.astype(np.float32) / 127.5 - 1.0


def images_at(stored: dict, size: int) -> np.ndarray:
  """Final images in [-1, 1] at `size`: stored ones, else resized (antialiased) from the largest stored size."""
  if size in stored:
    return _to_float(stored[size])
  largest = max(stored)
  return np.asarray(transforms.resize(jnp.asarray(_to_float(stored[largest])), size))


def _rgb(images):
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def batched(fn, images, batch_size: int) -> np.ndarray:
  """fn over `images` in fixed-size batches (the last one padded: one compilation)."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(fn(chunk))[:n])
  return np.concatenate(out)


def fid_inputs(images, quirk: bool):
  """What the FID network sees of images in [-1, 1]: the same (standard), or PPA's 2x - 1 (in [-3, 1]).

  pytorch-fid maps its [0, 1] inputs to [-1, 1] itself; PPA hands it [-1, 1] images, which it maps again.
  """
  return 2.0 * images - 1.0 if quirk else images


def classifier_functions(model, variables):
  """(logits, penultimate features) functions of a trained classifier, jitted."""
  logits = jax.jit(lambda x: model.apply(variables, x, train=False))
  if isinstance(model, inception.Inception3):
    features = jax.jit(lambda x: model.apply(variables, x, train=False, features_only=True))
  else:  # the last hidden feature a target records is its pooled penultimate feature
    def _features(x):
      _, recorded = model.apply(variables, x, train=False, mutable=[layers.HIDDEN_COLLECTION])
      hidden = recorded.get(layers.HIDDEN_COLLECTION, {}).get(layers.HIDDEN_NAME)
      if not hidden:
        raise EvaluationError(f'{type(model).__name__} records no hidden features to measure KNN distances with')
      return hidden[-1]
    features = jax.jit(_features)
  return logits, features


def private_images(data_config: dict, classes, size: int, batch_size: int):
  """Training-split images of `classes` (in [-1, 1], resized to `size`) and their labels."""
  data_config = ml_collections.ConfigDict(data_config)
  builder = sources.prepare(data_config)
  source = sources.get_source(builder, data_config.train_split)
  keep = set(int(c) for c in classes)
  images, labels = [], []
  for batch in pipeline.eval_batches(source, data_config, batch_size):
    rows = (batch['mask'] > 0) & np.isin(batch['label'], list(keep))
    images.append(batch['image'][rows])
    labels.append(batch['label'][rows])
  images, labels = np.concatenate(images), np.concatenate(labels)
  if size != images.shape[1]:
    images = batched(jax.jit(lambda x: transforms.resize(x, size)), images, batch_size)
  return images, labels


def _cached(cache_dir: str, key: dict, compute):
  """compute() -> dict of arrays, stored under `cache_dir` by a hash of `key`."""
  if not cache_dir:
    return compute()
  name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f'{key["what"]}_{name}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  arrays = compute()
  os.makedirs(cache_dir, exist_ok=True)
  reporting.save_npz(path, **arrays)
  return arrays


def validate_metrics(metrics: ml_collections.ConfigDict):
  """Weight files named in config.metrics must exist (checked before any work)."""
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top
  for field in ('facenet_file', 'fid_inception_file'):
    path = metrics[field]
    jobs.check_field(not path or os.path.isfile(os.path.expanduser(path)), f'metrics.{field}', path,
                     'no such file', FileNotFoundError)
  jobs.check_field(isinstance(metrics.batch_size, int) and metrics.batch_size > 0, 'metrics.batch_size',
                   metrics.batch_size, 'expected a positive integer')


def validate_config(config: ml_collections.ConfigDict):
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top
  jobs.check_field(bool(config.evaluation.workdir), 'evaluation.workdir', config.evaluation.workdir,
                   "name the evaluation model's train workdir (configs/eval_model.py)")
  validate_metrics(config.metrics)


def evaluate_job(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The `evaluate` job: the workdir is a finished attack's."""
  m = config.metrics
  return evaluate_attack(workdir, config.evaluation.workdir, m.facenet_file, m.fid_inception_file, m.fid_quirk,
                         m.batch_size, m.cache_dir)


def evaluate_attack(attack_workdir: str,
                    evaluation_workdir: str,
                    facenet_file: str = '',
                    fid_inception_file: str = '',
                    fid_quirk: bool = False,
                    batch_size: int = 64,
                    cache_dir: str = '') -> dict:
  """Computes the metrics of one attack and writes evaluation.json / evaluation.npz into its workdir."""
  attack_path = os.path.join(attack_workdir, 'attack.json')
  if not os.path.exists(attack_path):
    raise EvaluationError(f'{attack_workdir} holds no attack.json: the attack has not finished')
  with open(attack_path) as f:
    attack = json.load(f)
  stored, targets, confidences = load_final_images(attack_workdir)
  classes = sorted(set(targets.tolist()))
  data_config = attack['target_config']['data']

  eval_model, eval_vars, eval_saved = ppa.load_target(os.path.expanduser(evaluation_workdir))
  if eval_saved['data']['name'] != data_config['name']:
    raise EvaluationError(f'the evaluation model in {evaluation_workdir} was trained on {eval_saved["data"]["name"]}, '
                          f'the target on {data_config["name"]}')
  eval_size = eval_saved['data']['image_size']
  eval_logits_fn, eval_features_fn = classifier_functions(eval_model, eval_vars)
  fakes_eval = images_at(stored, eval_size)
  logits = batched(eval_logits_fn, fakes_eval, batch_size)
  accuracy = scores_lib.attack_accuracy(logits, targets)
  results = {'attack_acc_top1': accuracy['top1'], 'attack_acc_top5': accuracy['top5'], 'images': int(len(targets)),
             'classes': len(classes)}

  # KNN distance, evaluation-model features. The private features are the same for every attack.
  key = {'what': 'evaluation_features', 'model': os.path.abspath(os.path.expanduser(evaluation_workdir)),
         'data': data_config, 'classes': classes}

  def private_eval_features():
    images, labels = private_images(data_config, classes, eval_size, batch_size)
    return {'features': batched(eval_features_fn, images, batch_size), 'labels': labels}
  private = _cached(cache_dir, key, private_eval_features)
  fake_eval_features = batched(eval_features_fn, fakes_eval, batch_size)
  results['knn_dist_eval'] = scores_lib.knn_distance(fake_eval_features, targets, private['features'],
                                                     private['labels'])

  if facenet_file:
    module, variables = eval_models.import_facenet(facenet_file)
    embed = jax.jit(lambda x: module.apply(variables, x, train=False))
    size = eval_models.FACENET_SIZE
    private_face = _cached(cache_dir, {**key, 'what': 'facenet_features', 'model': facenet_file}, lambda: {
        'features': batched(embed, _rgb(private_images(data_config, classes, size, batch_size)[0]), batch_size)})
    results['knn_dist_facenet'] = scores_lib.knn_distance(batched(embed, _rgb(images_at(stored, size)), batch_size),
                                                          targets, private_face['features'], private['labels'])

  if fid_inception_file:
    module, variables = eval_models.import_fid_inception(fid_inception_file)
    pool3 = jax.jit(lambda x: module.apply(variables, fid_inputs(x, fid_quirk), train=False, features_only=True))
    size = eval_models.FID_SIZE
    private_fid = _cached(cache_dir, {**key, 'what': 'fid_features', 'model': fid_inception_file, 'quirk': fid_quirk},
                          lambda: {'features': batched(pool3, _rgb(private_images(data_config, classes, size,
                                                                                  batch_size)[0]), batch_size)})
    real, fake = private_fid['features'], batched(pool3, _rgb(images_at(stored, size)), batch_size)
    results['fid_features'] = 'inception_quirk' if fid_quirk else 'inception'
  else:
    real, fake = private['features'], fake_eval_features
    results['fid_features'] = 'evaluation_model'
  results['fid'] = scores_lib.frechet_distance(*scores_lib.gaussian_statistics(fake),
                                               *scores_lib.gaussian_statistics(real))

  # False positives: images the target accepts (final confidence > 0.5) that the evaluation model rejects.
  accepted = confidences > 0.5
  rejected = np.argmax(logits, -1) != targets
  results['target_accepts'] = float(np.mean(accepted))
  results['false_positive_rate'] = float(np.mean(rejected[accepted])) if accepted.any() else float('nan')

  reporting.save_npz(os.path.join(attack_workdir, 'evaluation.npz'), targets=targets, target_confidence=confidences,
                     eval_logits=logits)
  reporting.write_json(os.path.join(attack_workdir, 'evaluation.json'), results)
  logging.info('Evaluation of %s: %s', attack_workdir, results)
  return results
