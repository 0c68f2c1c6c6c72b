"""The `train` job: train a target classifier from config, resumable after a kill.

Flow: config -> TFDS source -> grain pipeline -> model -> jitted, sharded train
step -> eval each `eval_every_epochs` -> Orbax checkpoint (state, iterator
state, config) -> metrics (TensorBoard, CSV) and `results.json` in the workdir.
"""

import functools
import os
from typing import Callable

from absl import logging
import jax
import ml_collections

from mi_jax import config_checks, convert, models
from mi_jax.data import pipeline, sources
from mi_jax.defenses import bido, label_smoothing, mid, transfer, trapdoor
from mi_jax.train import checkpoint, loop, optim, reporting, sharding, state as state_lib, steps


def validate_config(config: ml_collections.ConfigDict):
  """Fails before any work, naming the field, on a classifier config that would break inside the job."""
  check = config_checks.check_field
  models.build_model(config.model)  # validates name, dtype, skip and the family's options
  sources.resolve(config.data)  # validates the data set name without touching data_dir
  config_checks.check_positive_ints(
      config,
      (
          'train.batch_size',
          'train.eval_every_epochs',
          'train.log_every_steps',
          'train.keep_checkpoints',
          'data.image_size',
          'model.num_classes',
      ),
  )
  epochs, init_file = config.train.epochs, config.model.init_file
  check(
      isinstance(epochs, int) and epochs >= 0,
      'train.epochs',
      epochs,
      'expected an integer >= 0 (0 = use config.model.init_file as it is)',
  )
  check(
      epochs > 0 or bool(init_file),
      'train.epochs',
      epochs,
      '0 means "use config.model.init_file as it is", but config.model.init_file is empty',
  )
  check(
      not init_file or os.path.isfile(os.path.expanduser(init_file)),
      'model.init_file',
      init_file,
      'no such file',
      FileNotFoundError,
  )
  check(config.train.aux_loss_weight >= 0, 'train.aux_loss_weight', config.train.aux_loss_weight, 'expected >= 0')
  check(config.model.width >= 0, 'model.width', config.model.width, 'expected >= 0 (0 = the architecture default)')
  check(config.num_devices >= 0, 'num_devices', config.num_devices, 'expected >= 0 (0 = all devices)')
  check(config.data.worker_count >= 0, 'data.worker_count', config.data.worker_count, 'expected >= 0')
  check(config.optim.lr > 0, 'optim.lr', config.optim.lr, 'expected > 0')
  check(
      config.train.diverged_loss >= 0,
      'train.diverged_loss',
      config.train.diverged_loss,
      'expected >= 0 (0 = stop on NaN/inf only)',
  )
  check(
      list(config.optim.lr_milestones) == sorted(config.optim.lr_milestones),
      'optim.lr_milestones',
      config.optim.lr_milestones,
      'expected increasing epochs',
  )
  bido.validate_config(config)
  mid.validate_config(config)
  label_smoothing.validate_config(config)
  transfer.validate_section(config)
  trapdoor.validate_config(config)
  pipeline.validate_erasing(config.data.augment)
  if config.distill.teacher:
    sources.resolve(config.distill.data)
    check(config.distill.temperature > 0, 'distill.temperature', config.distill.temperature, 'expected > 0')
  config_checks.check_range(config, 'data.augment.rrc_scale')
  ratio = config.data.augment.rrc_ratio
  check(
      len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
      'data.augment.rrc_ratio',
      ratio,
      'expected (low, high) with 0 < low <= high',
  )


def as_imported(config: ml_collections.ConfigDict):
  """No training: config.model.init_file is the finished model, used as it is (train.epochs = 0).

  Every weight, the head included, must then come from the file (init_reinit is emptied); an
  Inception-v3's auxiliary head is read past, as evaluation never uses it.
  """
  config.train.epochs = 0
  config.model.init_reinit = ()
  if 'aux_logits' in config.model:
    config.model.aux_logits = False


def evaluate(eval_step, state, source, data_config, batch_size: int, mesh) -> dict:
  """Test loss, top-1 and top-5 accuracy over the whole split."""
  totals = None
  for batch in pipeline.eval_batches(source, data_config, batch_size):
    sums = eval_step(state, sharding.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {
      'test_loss': totals['loss'] / count,
      'test_accuracy': totals['top1'] / count,
      'test_top5': totals['top5'] / count,
  }


def load_teacher(config: ml_collections.ConfigDict):
  """images in [-1, 1] -> the logits of the classifier in config.distill.teacher (its 'best' checkpoint, the
  one the attacks use), in eval mode; it must have the student's classes and input size."""
  try:
    model, variables, saved, _, _ = checkpoint.load_classifier(os.path.expanduser(config.distill.teacher), 'best')
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise checkpoint.CheckpointError(f'config.distill.teacher={config.distill.teacher!r}: {e}') from None
  if saved['model']['num_classes'] != config.model.num_classes or saved['data']['image_size'] != config.data.image_size:
    raise checkpoint.CheckpointError(
        f'config.distill.teacher={config.distill.teacher!r} has {saved["model"]["num_classes"]} classes at '
        f'{saved["data"]["image_size"]}px; the student (config.model.num_classes, config.data.image_size) has '
        f'{config.model.num_classes} at {config.data.image_size}px'
    )
  return lambda images: model.apply(variables, images, train=False)


def training_objective(
    config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int, learning_rate_fn, teacher
):
  """steps.train_step's keyword arguments for the config's training-time defenses (BiDO, MID, LS/NegLS, Trap-MID)
  and LOMMA's distillation (`teacher`: load_teacher's, or None)."""
  regularizers = []
  if bido.is_enabled(config.bido):
    regularizers.append(bido.make_regularizer(config.bido, num_classes))
  if mid.is_enabled(config):
    regularizers.append(mid.make_regularizer(config.mid.beta))
  objective = {
      'regularizers': tuple(regularizers),
      'aux_loss_weight': config.train.aux_loss_weight,
      'teacher': teacher,
      'temperature': config.distill.temperature,
  }
  if label_smoothing.is_enabled(config):
    objective['smoothing_fn'] = label_smoothing.make_schedule(config, steps_per_epoch)
  if trapdoor.is_enabled(config):
    objective['batch_transform'] = trapdoor.make_batch_transform(config, learning_rate_fn, num_classes)
  return objective


def chance_level_warnings(test_metrics: dict, num_classes: int) -> list[str]:
  """A warning when the final test accuracy is below twice chance: the run learned nothing (or diverged)."""
  chance = 1.0 / num_classes
  accuracy = test_metrics['test_accuracy']
  if accuracy >= 2 * chance:
    return []
  return [
      f'final test accuracy {accuracy:.4f} is near chance (1/{num_classes} = {chance:.4f}), test loss '
      f'{test_metrics["test_loss"]:.4g}: the model did not learn. Check config.optim.lr, the data and init_file.'
  ]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_step: Callable[[int], None] | None = None,
    init_variables: Callable[[dict], dict] | None = None,
) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final test metrics.

  `init_variables(fresh)` maps the freshly initialised {'params', 'batch_stats'}
  to the ones to start from (TTS stage 2); it is not called when resuming.
  `on_step(step)` is called after every step that has been fully processed
  (checkpoint included); tests use it to interrupt a run.
  """
  mesh = sharding.make_mesh(config.num_devices)

  # ---------------------------------------------------------------- data
  builder = sources.prepare(config.data)
  num_classes = sources.num_classes(builder)
  if config.model.num_classes != num_classes:
    raise ValueError(
        f'config.model.num_classes={config.model.num_classes}, but {config.data.name} has ' f'{num_classes} classes'
    )
  teacher, train_data = None, config.data
  if config.distill.teacher:  # LOMMA's surrogates: learn the teacher's outputs on another (public) set
    teacher, train_data = load_teacher(config), ml_collections.ConfigDict(config.distill.data.to_dict())
    train_data.image_size = config.data.image_size
    train_source = sources.get_source(sources.prepare(train_data), train_data.train_split)
  else:
    train_source = sources.get_source(builder, config.data.train_split)
  test_source = sources.get_source(builder, config.data.test_split)
  batch_size = config.train.batch_size
  steps_per_epoch = len(train_source) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'config.train.batch_size={batch_size} exceeds the {len(train_source)} training examples')
  total_steps = config.train.epochs * steps_per_epoch
  eval_every = config.train.eval_every_epochs * steps_per_epoch

  # ---------------------------------------------------------------- model and state
  model = models.build_model(config.model)
  learning_rate_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch)
  tx = optim.create_optimizer(config.optim, learning_rate_fn)
  channels = builder.info.features['image'].shape[-1]
  if config.transfer.finetune_from:  # TL-DMI: the layers before the freeze point get no updates
    frozen = transfer.frozen_modules(model, config.data.image_size, config.transfer.finetune_from)
    logging.info('TL-DMI: frozen %s', ', '.join(frozen))
    tx = transfer.freeze(tx, frozen)
  state = state_lib.create_train_state(
      model, tx, (1, config.data.image_size, config.data.image_size, channels), config.seed
  )
  train_step, eval_step = steps.compile_steps(
      mesh, learning_rate_fn, **training_objective(config, num_classes, steps_per_epoch, learning_rate_fn, teacher)
  )
  if trapdoor.is_enabled(config):  # Trap-MID's triggers and discriminator train beside the model
    state = state.replace(defense=trapdoor.init_state(config, learning_rate_fn, num_classes, channels))

  # However the job ends (an error, Ctrl-C, SIGTERM), the checkpoint save in flight completes first.
  with checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=config.train.keep_checkpoints) as ckpt:
    imported = total_steps == 0  # train.epochs = 0: the init_file is the model, used as it is
    if init_variables is None and config.model.init_file:
      init_variables = functools.partial(convert.init_from_file, config.model, as_is=imported)
    replicated = sharding.replicated(mesh)
    state, data_state, start_step = loop.restore_latest(ckpt, jax.device_put(state, replicated), config, workdir)
    if start_step:
      logging.info('Resuming from %s/checkpoints/%d (epoch %.2f)', workdir, start_step, start_step / steps_per_epoch)
    elif init_variables is not None:  # a fresh run starts from given weights (a file, TTS's stage 1)
      start = init_variables({'params': state.params, 'batch_stats': state.batch_stats})
      state = jax.device_put(state.replace(params=start['params'], batch_stats=start['batch_stats']), replicated)
    train_iter = (
        None
        if imported
        else loop.resumed_iterator(
            pipeline.train_dataset(train_source, train_data, batch_size, config.train.epochs, config.seed), data_state
        )
    )

    writer = reporting.MetricWriter(workdir, resume_step=start_step)
    progress = reporting.Progress(total_steps, batch_size)
    logging.info(
        'Training %s on %s: %d examples, %d steps/epoch, %d steps, %d devices',
        config.model.name,
        config.data.name,
        len(train_source),
        steps_per_epoch,
        total_steps,
        mesh.devices.size,
    )

    # ---------------------------------------------------------------- loop
    window = loop.MetricWindow()
    test_metrics = {}
    diverged_hint = (
        f'Lower config.optim.lr and relaunch with --config.{loop.NEW_OPTIM_FLAG}=True to continue from the last '
        'checkpoint (the change is recorded in run_history.json), or start afresh in a new --workdir.'
    )
    for step in range(start_step + 1, total_steps + 1):
      batch = next(train_iter)
      if step == 1:
        writer.write_grid(0, 'train_inputs', batch['image'][:64], os.path.join(workdir, 'train_inputs.png'))
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      window.add(metrics)

      if step % config.train.log_every_steps == 0 or step % eval_every == 0 or step == total_steps:
        summary = window.flush(step, workdir, diverged_hint, prefix='train_', loss_limit=config.train.diverged_loss)
        summary['epoch'] = step / steps_per_epoch
        writer.write_scalars(step, summary)
        progress.update(step, {'loss': summary['train_loss'], 'acc': summary['train_accuracy']})
      else:
        progress.update(step)

      if step % eval_every == 0 or step == total_steps:
        test_metrics = evaluate(eval_step, state, test_source, config.data, batch_size, mesh)
        writer.write_scalars(step, test_metrics)
        logging.info(
            'epoch %.2f: %s', step / steps_per_epoch, ', '.join(f'{k}={v:.4f}' for k, v in test_metrics.items())
        )
        reporting.check_finite(step, test_metrics, workdir, diverged_hint, 'test metrics', config.train.diverged_loss)
        ckpt.save(step, state, train_iter.get_state(), config, test_metrics)
      if on_step is not None:
        ckpt.wait()
        on_step(step)

    ckpt.wait()
    if not test_metrics:  # resumed a finished run (or an imported model): report its final state
      test_metrics = evaluate(eval_step, state, test_source, config.data, batch_size, mesh)
    if imported and ckpt.latest_step() is None:
      ckpt.save(0, state, {}, config, test_metrics)
      ckpt.wait()
    best_step = ckpt.best_step()
    results = {
        **{k: float(v) for k, v in test_metrics.items()},
        'step': total_steps,
        'best_step': best_step,
        'best': {k: float(v) for k, v in ckpt.metrics(best_step).items()} if best_step is not None else {},
        'num_classes': num_classes,
        'train_examples': len(train_source),
        'test_examples': len(test_source),
        'steps_per_epoch': steps_per_epoch,
        'warnings': chance_level_warnings(test_metrics, num_classes),
    }
    for warning in results['warnings']:
      logging.warning('%s', warning)
    reporting.write_results(workdir, results)
    writer.close()
    logging.info('Done: %s', results)
    return results


run = train_and_evaluate  # the `train` job (mi_jax/jobs.py)
