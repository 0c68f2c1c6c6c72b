"""Evaluate a finished attack: attack accuracy, KNN distances, FID, PRDC and the false-positive record.

Reads an attack workdir through mi_jax/attack_outputs.py (any attack), renders the float,
unclipped images from the latents as PPA's metrics see them (generator, centre crop, resize), and
writes next to them
  evaluation.json   attack accuracy top-1/top-5 of the evaluation model on the final images and on every
                    optimised image (unfiltered, as PPA logs); KNN distance with the evaluation model's
                    penultimate features and, given its weight file, with FaceNet; FID and PRDC
                    (pytorch-fid's Inception given its weight file, otherwise the evaluation model's
                    features -- the field `fid_features` says which);
  evaluation.npz    per final image: target class, the target's final-selection confidence and
                    the evaluation model's logits (for the false-positive analysis).

Private reference images are the *training* split of the target's data set, classes attacked
only, each resized once from the stored original to the embedder's size, as PPA does
(Plug-and-Play-Attacks, metrics/distance_metrics.py and attack.py):
  KNN distances   PIL Resize((s, s)) before ToTensor: antialiased bilinear, whatever the torchvision;
  FID / PRDC      ToTensor then Resize((299, 299)): a tensor resize, antialiased or not with
                  `antialias` (upstream PPA passes antialias=True; the RoLSS code passes nothing, which
                  its torchvision did not antialias).
Their features do not depend on the attack, so `cache_dir` keeps them between evaluations.

FID inputs: pytorch-fid's network expects [0, 1] images and maps them to [-1, 1]. Our images
are in [-1, 1] and go in as they are (standard FID); `fid_quirk=True` repeats PPA's extra
2x - 1 (inputs in [-3, 1]) so that numbers are comparable with PPA's.
"""

import dataclasses
import hashlib
import json
import os
from typing import Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mi_jax import attack_outputs, config_checks, errors
from mi_jax.data import transforms
from mi_jax.convert import eval_models
from mi_jax.data import augment, sources
from mi_jax.metrics import scores as scores_lib
from mi_jax.models import inception, layers
from mi_jax.train import checkpoint, reporting

PRDC_K = 3  # PPA's k for precision, recall, density and coverage


class EvaluationError(errors.MiJaxError, ValueError):
  """An attack workdir or evaluation input that cannot be evaluated."""


@dataclasses.dataclass
class AttackImages:
  """Attack images to evaluate: float images at any size on demand, their target classes."""

  render: Callable[[int], np.ndarray]  # size -> float [N, size, size, C], about [-1, 1], unclipped
  targets: np.ndarray  # [N] attacked class of each image
  confidences: np.ndarray | None = None  # [N] the target's final-selection confidence (final images only)


def attack_images(attack_workdir: str, antialias: bool, batch_size: int) -> tuple[AttackImages, AttackImages]:
  """(final images, every optimised image) of the attack in `attack_workdir`, rendered from its latents.

  `antialias` governs the resize to each evaluation size (PPA's create_image for the metrics).
  """
  try:
    final_w, targets, confidences = attack_outputs.final_latents(attack_workdir)
    all_w, all_targets = attack_outputs.optimized_latents(attack_workdir)
    render = attack_outputs.make_renderer(attack_workdir, antialias)
  except attack_outputs.AttackOutputError as e:
    raise EvaluationError(str(e)) from None
  at = lambda w: lambda size: batched(lambda chunk: render(chunk, size), w, batch_size)
  return AttackImages(at(final_w), targets, confidences), AttackImages(at(all_w), all_targets)


def _rgb(images):
  """Grey images as RGB, for the networks that take 3 channels (FaceNet, the FID Inception)."""
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def batched(fn, inputs, batch_size: int) -> np.ndarray:
  """fn over `inputs` in fixed-size batches (the last one padded: one compilation)."""
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start : start + batch_size]
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


# ---------------------------------------------------------------------------- private images

PIL_RESIZE = 'pil'  # PIL Resize((s, s)) of the original: antialiased bilinear


def private_originals(data_config: dict, classes) -> Iterator[tuple[np.ndarray, int]]:
  """(uint8 image as stored, label) of every training-split image of `classes`, in split order."""
  data_config = ml_collections.ConfigDict(data_config)
  source = sources.get_source(sources.prepare(data_config), data_config.train_split)
  keep = set(int(c) for c in classes)
  for i in range(len(source)):
    example = source[i]
    if int(example['label']) in keep:
      yield example['image'], int(example['label'])


def resize_original(image: np.ndarray, size: int, resize) -> np.ndarray:
  """A stored uint8 image -> float [size, size, C] in [-1, 1]: PIL's resize (`resize='pil'`), or the tensor
  resize of torchvision's F.resize with antialias = `resize` (True/False) after ToTensor + Normalize."""
  if resize == PIL_RESIZE:
    return augment.normalize(augment.resize(augment.to_pil(image), size))
  return transforms.resize(image[None].astype(np.float32) / 127.5 - 1.0, size, bool(resize), xp=np)[0]


def private_features(data_config: dict, classes, size: int, embed, batch_size: int, resize) -> dict:
  """{'features', 'labels'} of the private training images of `classes`, each resized once from its original
  to `size` (resize_original) and embedded in batches (never more than a batch of images in memory)."""
  features, labels, images = [], [], []

  def flush():
    features.append(batched(embed, np.stack(images), batch_size))
    images.clear()

  for image, label in private_originals(data_config, classes):
    images.append(resize_original(image, size, resize))
    labels.append(label)
    if len(images) == batch_size:
      flush()
  if images:
    flush()
  if not labels:
    raise EvaluationError(f'{data_config["name"]} has no training images of the classes {sorted(classes)}')
  return {'features': np.concatenate(features), 'labels': np.asarray(labels)}


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


# ---------------------------------------------------------------------------- configuration


def validate_metrics(metrics: ml_collections.ConfigDict):
  """Weight files named in config.metrics must exist (checked before any work)."""
  for field in ('facenet_file', 'fid_inception_file'):
    path = metrics[field]
    config_checks.check_field(
        not path or os.path.isfile(os.path.expanduser(path)),
        f'metrics.{field}',
        path,
        'no such file',
        FileNotFoundError,
    )
  config_checks.check_field(
      isinstance(metrics.batch_size, int) and metrics.batch_size > 0,
      'metrics.batch_size',
      metrics.batch_size,
      'expected a positive integer',
  )


def validate_config(config: ml_collections.ConfigDict):
  config_checks.check_field(
      bool(config.evaluation.workdir),
      'evaluation.workdir',
      config.evaluation.workdir,
      "name the evaluation model's train workdir (configs/eval_model.py)",
  )
  config_checks.check_checkpoint_choice(config, 'evaluation.checkpoint')
  validate_metrics(config.metrics)


def evaluate_job(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The `evaluate` job: the workdir is a finished attack's."""
  return evaluate_attack(workdir, config.evaluation.workdir, config.metrics, config.evaluation.checkpoint)


# ---------------------------------------------------------------------------- evaluation


def evaluate_attack(
    attack_workdir: str,
    evaluation_workdir: str,
    metrics: ml_collections.ConfigDict,
    evaluation_checkpoint: str = 'latest',
) -> dict:
  """Computes the metrics of one attack and writes evaluation.json / evaluation.npz into its workdir.

  `metrics` is a config.metrics section (configs/evaluate.py).
  """
  try:
    attack = attack_outputs.read_attack(attack_workdir)
  except attack_outputs.AttackOutputError as e:
    raise EvaluationError(str(e)) from None
  final, unfiltered = attack_images(attack_workdir, metrics.antialias, metrics.batch_size)
  results, records = evaluate_images(
      final, unfiltered, attack['target_config']['data'], evaluation_workdir, metrics, evaluation_checkpoint
  )
  reporting.save_npz(os.path.join(attack_workdir, 'evaluation.npz'), **records)
  reporting.write_json(os.path.join(attack_workdir, 'evaluation.json'), results)
  logging.info('Evaluation of %s: %s', attack_workdir, results)
  return results


def evaluate_images(
    final: AttackImages,
    unfiltered: AttackImages | None,
    data_config: dict,
    evaluation_workdir: str,
    metrics: ml_collections.ConfigDict,
    evaluation_checkpoint: str = 'latest',
):
  """(results, per-image records) of attack images against the private data described by `data_config`."""
  batch_size, cache_dir = metrics.batch_size, metrics.cache_dir
  classes = sorted(set(final.targets.tolist()))
  evaluation_workdir = os.path.abspath(os.path.expanduser(evaluation_workdir))
  try:
    eval_model, eval_vars, eval_saved, eval_step, _ = checkpoint.load_classifier(
        evaluation_workdir, evaluation_checkpoint
    )
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise EvaluationError(f'the evaluation model: {e}') from None
  if eval_saved['data']['name'] != data_config['name']:
    raise EvaluationError(
        f'the evaluation model in {evaluation_workdir} was trained on {eval_saved["data"]["name"]}, '
        f'the target on {data_config["name"]}'
    )
  eval_size = eval_saved['data']['image_size']
  eval_logits_fn, eval_features_fn = classifier_functions(eval_model, eval_vars)
  fakes_eval = final.render(eval_size)
  logits = batched(eval_logits_fn, fakes_eval, batch_size)
  accuracy = scores_lib.attack_accuracy(logits, final.targets)
  results = {
      'attack_acc_top1': accuracy['top1'],
      'attack_acc_top5': accuracy['top5'],
      'images': int(len(final.targets)),
      'classes': len(classes),
      'evaluation_step': int(eval_step),
  }
  if unfiltered is not None:
    accuracy = scores_lib.attack_accuracy(
        batched(eval_logits_fn, unfiltered.render(eval_size), batch_size), unfiltered.targets
    )
    results.update(
        attack_acc_unfiltered_top1=accuracy['top1'],
        attack_acc_unfiltered_top5=accuracy['top5'],
        images_unfiltered=int(len(unfiltered.targets)),
    )

  # KNN distance, evaluation-model features. The private features are the same for every attack.
  key = {
      'what': 'evaluation_features',
      'model': evaluation_workdir,
      'step': int(eval_step),
      'data': data_config,
      'classes': classes,
  }
  private = _cached(
      cache_dir,
      key,
      lambda: private_features(data_config, classes, eval_size, eval_features_fn, batch_size, PIL_RESIZE),
  )
  fake_eval_features = batched(eval_features_fn, fakes_eval, batch_size)
  results['knn_dist_eval'] = scores_lib.knn_distance(
      fake_eval_features, final.targets, private['features'], private['labels']
  )

  if metrics.facenet_file:
    module, variables = eval_models.import_facenet(metrics.facenet_file)
    embed = jax.jit(lambda x: module.apply(variables, _rgb(x), train=False))
    size = eval_models.FACENET_SIZE
    private_face = _cached(
        cache_dir,
        {**key, 'what': 'facenet_features', 'model': metrics.facenet_file},
        lambda: private_features(data_config, classes, size, embed, batch_size, PIL_RESIZE),
    )
    results['knn_dist_facenet'] = scores_lib.knn_distance(
        batched(embed, final.render(size), batch_size),
        final.targets,
        private_face['features'],
        private_face['labels'],
    )

  if metrics.fid_inception_file:
    module, variables = eval_models.import_fid_inception(metrics.fid_inception_file)
    pool3 = jax.jit(
        lambda x: module.apply(variables, fid_inputs(_rgb(x), metrics.fid_quirk), train=False, features_only=True)
    )
    size = eval_models.FID_SIZE
    private_fid = _cached(
        cache_dir,
        {
            **key,
            'what': 'fid_features',
            'model': metrics.fid_inception_file,
            'quirk': metrics.fid_quirk,
            'antialias': metrics.antialias,
        },
        lambda: private_features(data_config, classes, size, pool3, batch_size, metrics.antialias),
    )
    real, real_labels = private_fid['features'], private_fid['labels']
    fake = batched(pool3, final.render(size), batch_size)
    results['fid_features'] = 'inception_ppa_inputs' if metrics.fid_quirk else 'inception'
  else:
    real, real_labels, fake = private['features'], private['labels'], fake_eval_features
    results['fid_features'] = 'evaluation_model'
  results['fid'] = scores_lib.frechet_distance(
      *scores_lib.gaussian_statistics(fake), *scores_lib.gaussian_statistics(real)
  )
  results.update(scores_lib.per_class_prdc(real, real_labels, fake, final.targets, PRDC_K))

  # False positives: images the target accepts (final confidence > 0.5) that the evaluation model rejects.
  records = {'targets': final.targets, 'eval_logits': logits}
  if final.confidences is not None:
    accepted = final.confidences > 0.5
    rejected = np.argmax(logits, -1) != final.targets
    results['target_accepts'] = float(np.mean(accepted))
    results['false_positive_rate'] = float(np.mean(rejected[accepted])) if accepted.any() else float('nan')
    records['target_confidence'] = final.confidences
  return results, records


run = evaluate_job  # the `evaluate` job (mi_jax/jobs.py)
