"""The training-time defenses beside BiDO: MID's bottleneck and KL term, LS/NegLS targets and schedule, TL-DMI's
freezing and two stages, Trap-MID in the train step, the registry's combinations, and every defense trained and
attacked by PPA in a tiny study."""

import json
import os

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mi_jax import defenses, jobs, models
from mi_jax.defenses import label_smoothing, mid, transfer, trapdoor
from mi_jax.models import vib
from mi_jax.train import checkpoint, optim, state as state_lib, steps, trainer


def _classifier(name='resnet18', num_classes=4, image_size=16, **model):
  config = common.base_config()
  config.model.update(name=name, num_classes=num_classes, width=4, stem='small', **model)
  config.model.skip = (1.0,) * models.num_skip_stages(name)
  config.data.image_size = image_size
  config.optim.lr_milestones = ()
  return config


def _batch(n=8, size=16, num_classes=4, seed=0):
  rng = np.random.RandomState(seed)
  return {
      'image': jnp.asarray(rng.uniform(-1, 1, (n, size, size, 1)), jnp.float32),
      'label': jnp.asarray(np.arange(n) % num_classes, jnp.int32),
  }


def _state(config, tx=None, seed=0):
  model = models.build_model(config.model)
  lr_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch=10)
  tx = tx or optim.create_optimizer(config.optim, lr_fn)
  size = config.data.image_size
  return model, lr_fn, state_lib.create_train_state(model, tx, (1, size, size, 1), seed)


# ---------------------------------------------------------------- MID


def test_vib_kl_is_the_closed_form_kl_to_a_standard_normal():
  # Hand values: N(0, 1) is the prior itself; a mean of 1 costs 1/2 per dimension; std e costs (e^2 - 1) / 2 - 1.
  mu = jnp.asarray([[0.0, 1.0, 0.0]])
  std = jnp.asarray([[1.0, 1.0, np.e]])
  assert float(mid.kl_to_standard_normal(mu, std)[0]) == pytest.approx(0.5 + (np.e**2 - 1) / 2 - 1, rel=1e-6)
  torch = pytest.importorskip('torch')
  rng = np.random.RandomState(0)
  mu, std = rng.randn(5, 7), np.exp(rng.randn(5, 7) * 0.5)
  want = torch.distributions.kl_divergence(
      torch.distributions.Normal(torch.tensor(mu), torch.tensor(std)), torch.distributions.Normal(0.0, 1.0)
  ).sum(-1)
  np.testing.assert_allclose(mid.kl_to_standard_normal(jnp.asarray(mu), jnp.asarray(std)), want.numpy(), rtol=1e-5)


def test_vib_head_keeps_the_classifier_tree_samples_in_training_and_predicts_with_the_mean():
  config = defenses.defend(_classifier(), 'mid')
  assert config.mid.beta == defenses.MID_BETA
  assert config.model.vib_dim == 16  # half the 32 pooled channels of a width-4 ResNet-18 (official k = d // 2)
  plain, wrapped = models.build_model(_classifier().model), models.build_model(config.model)
  images = _batch()['image']
  plain_params = traverse_util.flatten_dict(models.init_variables(plain, images.shape, jax.random.PRNGKey(0))['params'])
  variables = models.init_variables(wrapped, images.shape, jax.random.PRNGKey(0))
  params = traverse_util.flatten_dict(variables['params'])
  assert set(params) == set(plain_params) | {('vib_fc', 'kernel'), ('vib_fc', 'bias')}
  assert params['fc', 'kernel'].shape == (32, 32) and params['vib_fc', 'kernel'].shape == (16, 4)

  # Eval: logits = vib_fc(mu), mu the first half of the statistics the classifier's own head gives.
  statistics = plain.clone(num_classes=32).apply(
      {
          'params': {k: v for k, v in variables['params'].items() if k != 'vib_fc'},
          'batch_stats': variables['batch_stats'],
      },
      images,
  )
  want = statistics[:, :16] @ variables['params']['vib_fc']['kernel'] + variables['params']['vib_fc']['bias']
  np.testing.assert_allclose(wrapped.apply(variables, images), want, rtol=1e-5, atol=1e-6)

  # Training: z = mu + std eps, std = softplus(s - 5), recorded for the KL term; another key, another z.
  train = lambda seed: wrapped.apply(
      variables,
      images,
      train=True,
      mutable=['batch_stats', vib.VIB_COLLECTION],
      rngs={'dropout': jax.random.PRNGKey(seed)},
  )
  (logits_a, recorded), (logits_b, _) = train(1), train(2)
  assert not np.allclose(logits_a, logits_b)
  (std,) = recorded[vib.VIB_COLLECTION]['std']
  (mu,) = recorded[vib.VIB_COLLECTION]['mu']
  assert mu.shape == std.shape == (8, 16) and float(jnp.min(std)) > 0


@pytest.mark.slow
def test_a_mid_step_adds_beta_times_the_bottleneck_kl():
  config = defenses.defend(_classifier(), 'mid')
  config.mid.beta = 0.5
  _, lr_fn, state = _state(config)
  step = jax.jit(steps.train_step, static_argnums=(2, 3))
  _, metrics = step(state, _batch(), lr_fn, (mid.make_regularizer(config.mid.beta),))
  assert float(metrics['vib_kl']) > 0
  assert float(metrics['loss']) == pytest.approx(float(metrics['cross_entropy'] + 0.5 * metrics['vib_kl']), rel=1e-5)


def test_mid_needs_its_bottleneck():
  config = _classifier()
  config.mid.beta = 0.01
  with pytest.raises(ValueError, match='model.vib_dim'):
    trainer.validate_config(config)


# ---------------------------------------------------------------- LS / NegLS


def test_smoothed_targets_and_the_reference_loss():
  targets = label_smoothing.smoothed_targets(jnp.asarray([2]), 5, -0.05)
  np.testing.assert_allclose(targets[0], [-0.01, -0.01, 1.04, -0.01, -0.01], rtol=1e-6)  # 1 - a + a / C; a / C
  np.testing.assert_allclose(
      label_smoothing.smoothed_targets(jnp.asarray([0]), 4, 0.1)[0], [0.925, 0.025, 0.025, 0.025]
  )
  # PPA's losses/label_smoothing.py: (1 - a) NLL + a mean_c(-log p_c).
  logits = jnp.asarray(np.random.RandomState(0).randn(6, 5), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 4, 0])
  log_p = jax.nn.log_softmax(logits)
  for alpha in (-0.05, 0.1):
    want = (1 - alpha) * -log_p[jnp.arange(6), labels] + alpha * jnp.mean(-log_p, -1)
    np.testing.assert_allclose(label_smoothing.cross_entropy(logits, labels, alpha), want, rtol=1e-5)


def test_negls_schedule_is_ppas_as_coded_and_constant_as_the_repository_ran():
  ppa = lambda epoch, alpha=-0.05, schedule='ppa': label_smoothing.epoch_alpha(epoch, alpha, 100, schedule, 0.5, 0.75)
  assert ppa(0) == ppa(49) == 0.0
  assert ppa(50) == pytest.approx(-0.05 / 50)
  assert ppa(74) == pytest.approx(-0.025)  # the ramp reaches alpha / 2 ...
  assert ppa(75) == ppa(99) == -0.05  # ... then jumps to alpha
  assert ppa(0, schedule='constant') == -0.05
  assert ppa(0, alpha=0.1) == 0.1  # positive LS: no schedule (torch's CrossEntropyLoss(label_smoothing=a))
  config = defenses.defend(_classifier(), 'negls')
  config.train.epochs = 4
  schedule = label_smoothing.make_schedule(config, steps_per_epoch=3)
  got = [float(schedule(jnp.asarray(s))) for s in range(12)]
  want = [label_smoothing.epoch_alpha(s // 3, -0.05, 4, 'ppa', 0.5, 0.75) for s in range(12)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[0] == 0.0 and got[-1] == pytest.approx(-0.05)


# ---------------------------------------------------------------- TL-DMI


def test_tl_dmi_leaves_everything_before_the_freeze_point_unchanged_after_a_step():
  config = defenses.defend(_classifier(), 'tl_dmi')
  assert config.job == 'tl_dmi' and config.transfer.finetune_from == 'layer4'
  model = models.build_model(config.model)
  names = transfer.top_level_modules(model, 16)
  assert names == ['conv1', 'bn1'] + [f'layer{i}_{j}' for i in range(1, 5) for j in range(2)] + ['fc']
  frozen = transfer.frozen_modules(model, 16, 'layer4')
  assert frozen == tuple(names[:8])
  lr_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch=10)
  tx = transfer.freeze(optim.create_optimizer(config.optim, lr_fn), frozen)
  _, _, state = _state(config, tx)
  after, _ = jax.jit(steps.train_step, static_argnums=2)(state, _batch(), lr_fn)
  for name in names:
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.params[name], after.params[name])
    assert all(jax.tree.leaves(same)) == (name in frozen), name
  # Frozen layers' BatchNorm statistics still follow the data, as model.train() in the official engine.
  assert not np.array_equal(state.batch_stats['bn1']['mean'], after.batch_stats['bn1']['mean'])
  config.transfer.finetune_from = 'layer9'
  with pytest.raises(ValueError, match='transfer.finetune_from'):
    trainer.validate_config(config)


@pytest.mark.slow
def test_tl_dmi_job_pretrains_on_public_data_and_fine_tunes_the_last_stage(tmp_path, tfds_dir):
  from configs import tl_dmi as tl_dmi_config  # pylint: disable=g-import-not-at-top

  config = tl_dmi_config.get_config('tiny,epochs=1')
  config.num_devices = 1
  config.data.data_dir = config.transfer.public_data.data_dir = tfds_dir
  jobs.validate_config(config)
  jobs.run(config, str(tmp_path))
  stage1 = checkpoint.load_classifier(str(tmp_path / 'stage1'))
  stage2 = checkpoint.load_classifier(str(tmp_path / 'stage2'))
  assert (
      stage1.config['data']['name'] == 'digits_demo/public' and stage2.config['data']['name'] == 'digits_demo/private'
  )
  report = json.load(open(tmp_path / 'stage2' / 'transplant.json'))
  assert report['reinitialised'] == ['params/fc/bias', 'params/fc/kernel']  # the public head has other classes
  for name, params in stage2.variables['params'].items():  # the frozen modules are stage 1's, bit for bit
    same = all(jax.tree.leaves(jax.tree.map(np.array_equal, params, stage1.variables['params'][name])))
    assert same == (not name.startswith(('layer4', 'fc'))), name
  assert os.path.isfile(tmp_path / 'results.json')


def test_tl_dmi_needs_public_weights(tmp_path):
  config = defenses.defend(_classifier(), 'tl_dmi')  # neither model.init_file nor public data
  config.transfer.pretrain_epochs = 0
  with pytest.raises(ValueError, match='model.init_file'):
    jobs.validate_config(config)


# ---------------------------------------------------------------- Trap-MID in the train step


@pytest.mark.slow
def test_a_trap_mid_step_moves_triggers_by_signed_steps_and_trains_the_discriminator():
  config = defenses.defend(_classifier(), 'trap_mid')
  assert config.trapdoor.alpha == trapdoor.ALPHA and config.trapdoor.beta == trapdoor.BETA
  _, lr_fn, state = _state(config)
  state = state.replace(defense=trapdoor.init_state(config, lr_fn, num_classes=4, channels=1))
  transform = trapdoor.make_batch_transform(config, lr_fn, num_classes=4)
  step = jax.jit(lambda s, b: steps.train_step(s, b, lr_fn, batch_transform=transform))
  after, metrics = step(state, _batch())
  moved = np.asarray(after.defense['triggers'] - state.defense['triggers'])
  step_size = 2 * config.trapdoor.trigger_step  # in [-1, 1] units
  inside = np.abs(np.asarray(after.defense['triggers'])) < 1
  np.testing.assert_allclose(np.abs(moved[inside]), step_size, rtol=1e-4)  # a signed step where not clipped
  d0, d1 = state.defense['discriminator']['params'], after.defense['discriminator']['params']
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, d0, d1)))
  assert {'discriminator_loss', 'trigger_loss'} <= set(metrics) and np.isfinite(float(metrics['loss']))


# ---------------------------------------------------------------- the registry


def test_defenses_combine_with_plus_and_refuse_conflicts():
  spec = defenses.defense_spec('rolss+negls')
  assert (spec.label, spec.last_stage, spec.smoothing) == ('RoLSS+NegLS', 'remove', defenses.NEGLS_ALPHA)
  config = defenses.defend(_classifier(), 'rolss+mid+midre')
  assert config.model.skip == (1.0, 1.0, 1.0, 0.0) and config.mid.beta > 0 and config.data.augment.erase_p == 1.0
  assert config.label_smoothing.alpha == 0 and config.trapdoor.alpha == 0  # what the row does not name is off
  for name, match in (('rolss+ssf', 'change the last stage'), ('tts+tl_dmi', 'two-stage'), ('ls+negls', 'two label')):
    with pytest.raises(ValueError, match=match):
      defenses.defense_spec(name)
  with pytest.raises(ValueError, match="'nope' is not a defense"):
    defenses.defend(_classifier(), 'rolss+nope')


@pytest.mark.parametrize('name', ['mid', 'ls', 'negls', 'tl_dmi', 'trap_mid', 'midre'])
def test_each_defense_config_has_a_valid_demo_preset(name):
  module = __import__(f'configs.{name}', fromlist=['get_config'])
  config = module.get_config('demo')
  jobs.validate_config(config)
  spec = defenses.defense_spec(name)
  assert config.job == spec.job
  assert bool(config.mid.beta) == spec.mid and config.label_smoothing.alpha == spec.smoothing
  assert bool(config.trapdoor.alpha) == spec.trapdoor and bool(config.data.augment.erase_p) == spec.erasing


def test_a_saved_run_without_the_new_sections_ran_with_them_off():
  config = _classifier()
  saved = json.loads(json.dumps(config.to_dict()))
  for section in ('mid', 'label_smoothing', 'transfer', 'trapdoor'):
    del saved[section]
  del saved['model']['vib_dim']
  checkpoint.check_same_run(saved, config, 'workdir')  # no error: the same run
  config.mid.beta = 0.01
  with pytest.raises(checkpoint.CheckpointError, match='mid'):
    checkpoint.check_same_run(saved, config, 'workdir')


# ---------------------------------------------------------------- the study


@pytest.mark.slow
def test_every_defense_trains_and_is_attacked_by_ppa_in_a_tiny_study(tmp_path, tfds_dir):
  from mi_jax.stylegan import networks, save_generator  # pylint: disable=g-import-not-at-top
  from test_reproduce import GEN, tiny_study_config  # pylint: disable=g-import-not-at-top

  G = networks.Generator(GEN)
  save_generator(str(tmp_path / 'generator'), GEN, jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim))))
  config = tiny_study_config(tmp_path, tfds_dir)
  names = ('mid', 'ls', 'negls', 'tl_dmi', 'trap_mid', 'midre', 'rolss+negls')
  config.study.defenses = names
  config.classifier.transfer.public_data.update(name='digits_demo/public', data_dir=tfds_dir, image_size=16)
  config.classifier.train.epochs = 1
  workdir = str(tmp_path / 'study')
  rows = jobs.run(config, workdir)
  assert [r['defense'] for r in rows] == [defenses.defense_spec(n).label for n in names]
  assert all(0 <= r['attack_acc_top1'] <= 1 and r['images'] == 10 for r in rows)
  table = open(os.path.join(workdir, 'results.md')).read()
  for label in ('MID', 'NegLS', 'TL-DMI', 'Trap-MID', 'MIDRE', 'RoLSS+NegLS'):
    assert f'| resnet18 | {label} |' in table
  saved = lambda key: checkpoint.load_classifier(os.path.join(workdir, 'resnet18', key, 'train')).config
  assert saved('mid')['model']['vib_dim'] > 0 and saved('midre')['data']['augment']['erase_p'] == 1.0
  assert os.path.isdir(os.path.join(workdir, 'resnet18', 'tl_dmi', 'train', 'stage2', 'checkpoints'))


@pytest.mark.slow
def test_a_killed_trap_mid_run_resumes_with_its_triggers_and_discriminator(tmp_path, tfds_dir):
  from configs import trap_mid  # pylint: disable=g-import-not-at-top

  def config():
    c = trap_mid.get_config('tiny,epochs=2')
    c.data.data_dir, c.num_devices = tfds_dir, 1
    return c

  class Killed(Exception):
    pass

  def kill_after_the_first_epoch(step):  # 25 steps per epoch: the checkpoint of step 25 is the last one
    if step == 30:
      raise Killed()

  trainer.train_and_evaluate(config(), str(tmp_path / 'whole'))
  with pytest.raises(Killed):
    trainer.train_and_evaluate(config(), str(tmp_path / 'killed'), on_step=kill_after_the_first_epoch)
  trainer.train_and_evaluate(config(), str(tmp_path / 'killed'))
  final = lambda run: checkpoint.restore_on_host(str(tmp_path / run / 'checkpoints' / '50' / 'state'))
  whole, resumed = final('whole'), final('killed')
  assert set(whole['defense']) == {'triggers', 'discriminator'}
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, whole, resumed)))  # model, triggers, discriminator
