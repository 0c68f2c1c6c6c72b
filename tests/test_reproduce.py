"""The reproduce job on a tiny study (ResNet-18, three defenses, a random tiny generator), the
evaluation of an attack on inputs with known answers, and the analyses."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import paper
import PIL.Image

from mi_jax import attack_outputs, jobs, reproduce
from mi_jax.analysis import gradient_flow, repvgg_equivalence
from mi_jax.data import transforms
from mi_jax.data import augment
from mi_jax.metrics import evaluate, scores
from mi_jax.train import checkpoint
from mi_jax.stylegan import networks, save_generator

from conftest import REPO_ROOT
from test_reliability import _env, _launch_processes

GEN = networks.GeneratorConfig(
    z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2, channel_base=64, channel_max=8
)


def tiny_study_config(root, tfds_dir):
  config = paper.get_config('demo,epochs=2')
  config.num_devices = 1
  config.study.architectures = ('resnet18',)
  config.study.defenses = ('none', 'tts')
  for section in (config.classifier, config.evaluation_model):
    section.data.name = 'digits_demo/private'
    section.data.data_dir = tfds_dir
    section.data.image_size = 16
    section.model.width = 4
    section.train.batch_size = 32
  config.attacks.ppa.generator.dir = str(root / 'generator')
  config.attacks.ppa.attack.update(
      search_space_size=24,
      num_candidates=2,
      batch_size=10,
      steps=2,
      truncation_cutoff=2,
      final_samples=2,
      final_iterations=2,
  )
  config.analysis.repvgg = ''
  return config


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory, tfds_dir):
  root = tmp_path_factory.mktemp('study')
  G = networks.Generator(GEN)
  save_generator(str(root / 'generator'), GEN, jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim))))
  config = tiny_study_config(root, tfds_dir)
  workdir = str(root / 'study')
  rows = jobs.run(config, workdir)
  return config, workdir, rows


def _run(key, acc, class_hits, seed=42):
  """One seed's row as the study records it: 5 classes, the hits of each of its final images."""
  images = sum(n for _, _, n in class_hits)
  return dict(
      architecture='resnet18',
      defense=key,
      key=key,
      attack='ppa',
      seed=seed,
      acc=acc,
      test_examples=250,
      attack_acc_top1=sum(h for _, h, _ in class_hits) / images,
      attack_acc_top5=1.0,
      images=images,
      class_hits=class_hits,
  )


def test_table_deltas_intervals_and_columns():
  """Δ only where accuracy dropped, Wilson intervals of Acc and AttAcc@1 with one seed, the paired test over
  classes, no -0.00, no top-5 column for <= 5 classes."""
  hits = lambda *h: [[c, k, 6] for c, k in enumerate(h)]
  runs = [
      _run('none', 0.9, hits(6, 6, 5, 4, 3)),  # 24 of 30
      _run('rolss', 0.85, hits(4, 4, 4, 3, 3)),  # 18 of 30
      _run('ssf', 0.95, hits(3, 3, 3, 3, 3)),
      _run('tts', 0.9, hits(0, 0, 0, 0, 0)),
  ]
  rows = reproduce.summarise(runs)
  assert math.isnan(rows[0]['delta']) and rows[1]['delta'] == pytest.approx(4.0)
  assert rows[2]['delta'] == rows[3]['delta'] == reproduce.NO_ACCURACY_COST  # higher, or equal, accuracy
  assert rows[1]['attack_acc_top1_ci'] == list(scores.wilson_interval(18, 30))
  assert rows[1]['acc_ci'] == list(scores.wilson_interval(round(0.85 * 250), 250))
  # Per class (in sixths): rolss - none = (-2, -2, -1, -1, 0); the test pairs the classes.
  want = scores.paired_permutation_p(np.array([-2, -2, -1, -1, 0]) / 6)
  assert rows[1]['p_vs_none'] == pytest.approx(want) and rows[1]['pairs'] == 5 and 'p_vs_none' not in rows[0]
  assert rows[3]['p_vs_none'] == pytest.approx(0.0625)  # every class lower: 2 of the 32 sign patterns
  study = ml_collections.ConfigDict({'attacks': ('ppa',)})
  five = reproduce.markdown_table(rows, reproduce._columns(study, num_classes=5))  # pylint: disable=protected-access
  many = reproduce.markdown_table(rows, reproduce._columns(study, num_classes=530))  # pylint: disable=protected-access
  assert 'AttAcc@5' not in five and 'AttAcc@5' in many
  assert '| 4.00 |' in five and '| no acc. cost |' in five and '-0.00' not in five
  assert '| 60.00 | 42.3–75.4 |' in five  # 18/30 and its interval
  assert '| 85.00 | 79.8–88.7 |' in five  # Acc: 212/250 and its interval


def test_several_seeds_give_means_intervals_across_seeds_and_pairs_per_seed():
  hits = lambda *h: [[c, k, 4] for c, k in enumerate(h)]
  runs = [
      _run('none', 0.90, hits(4, 4, 3), seed=1),
      _run('none', 0.80, hits(4, 3, 3), seed=2),
      _run('none', 0.85, hits(4, 4, 4), seed=3),
      _run('rolss', 0.70, hits(1, 2, 3), seed=1),
      _run('rolss', 0.75, hits(2, 2, 2), seed=2),
      _run('rolss', 0.65, hits(0, 1, 2), seed=3),
  ]
  none, rolss = reproduce.summarise(runs)
  assert none['seeds'] == [1, 2, 3] and none['images'] == 36 and none['acc'] == pytest.approx(0.85)
  np.testing.assert_allclose(none['acc_ci'], scores.t_interval([0.90, 0.80, 0.85]))
  per_seed = [sum(h for _, h, _ in r['class_hits']) / 12 for r in runs[3:]]
  np.testing.assert_allclose(rolss['attack_acc_top1_ci'], np.clip(scores.t_interval(per_seed), 0, 1))
  assert rolss['attack_acc_top1'] == pytest.approx(np.mean(per_seed))
  # Nine pairs: each class under each seed, rolss minus none.
  differences = np.array([1 - 4, 2 - 4, 3 - 3, 2 - 4, 2 - 3, 2 - 3, 0 - 4, 1 - 4, 2 - 4]) / 4
  assert rolss['pairs'] == 9 and rolss['p_vs_none'] == pytest.approx(scores.paired_permutation_p(differences))
  assert rolss['delta'] == pytest.approx((none['attack_acc_top1'] - rolss['attack_acc_top1']) / (0.85 - 0.70))


@pytest.mark.slow
def test_study_writes_the_table_and_the_figures(tiny_study):
  _, workdir, rows = tiny_study
  assert [r['defense'] for r in rows] == ['No defense', 'TTS']
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [r['defense'] for r in table] == ['No defense', 'TTS']
  for r in rows:
    assert 0 <= r['acc'] <= 1 and 0 <= r['attack_acc_top1'] <= r['attack_acc_top5'] <= 1
    assert r['knn_dist_eval'] >= 0 and math.isfinite(r['fid']) and r['fid_features'] == 'evaluation_model'
    assert r['images'] == 5 * 2 and r['images_unfiltered'] == 5 * 2
    assert 0 <= r['prdc_precision'] <= 1 and 0 <= r['prdc_coverage'] <= 1
  assert math.isnan(rows[0]['delta'])
  # Δ is the attack-accuracy drop over the accuracy drop against the No-defense row.
  base, tts_row = rows
  if scores.accuracy_cost(base['acc'], tts_row['acc']):
    want = scores.delta_ratio(base['acc'], base['attack_acc_top1'], tts_row['acc'], tts_row['attack_acc_top1'])
    assert tts_row['delta'] == pytest.approx(want)
  else:
    assert tts_row['delta'] == reproduce.NO_ACCURACY_COST
  low, high = tts_row['attack_acc_top1_ci']
  assert (low, high) == scores.wilson_interval(round(tts_row['attack_acc_top1'] * 10), 10)
  markdown = open(os.path.join(workdir, 'results.md')).read()
  assert '| resnet18 | TTS |' in markdown and 'Δ' in markdown and 'Coverage' in markdown
  assert "evaluation model's features" in markdown and 'FID ↑ (eval. features)' in markdown  # the convention
  for name in ('gradient_flow_resnet18.png', 'false_positives.png', 'accuracy_vs_attack.png'):
    assert os.path.getsize(os.path.join(workdir, 'figures', name)) > 1000
  # The attacked checkpoint is the best one on test (study.checkpoint = 'best'); Acc is its accuracy.
  # TTS: the target is stage 2, trained with the last stage's skips removed after stage 1.
  for r, train_dir in zip(rows, ('none/train', 'tts/train/stage2')):
    trained = json.load(open(os.path.join(workdir, 'resnet18', train_dir, 'results.json')))
    assert r['step'] == trained['best_step'] and r['acc'] == trained['best']['test_accuracy']
    assert r['epoch'] == r['step'] / trained['steps_per_epoch']


def test_study_cells_take_the_defense_and_the_shared_settings(tmp_path, tfds_dir):
  config = tiny_study_config(tmp_path, tfds_dir)
  row = reproduce.row_config(config, 'densenet121', 'rolss_bido')
  assert (row.bido.a1, row.bido.a2) == (0.05, 0.5) and tuple(row.model.skip) == (1.0, 1.0, 1.0, 0.0)
  assert row.model.name == 'densenet121' and row.model.width == 4 and row.data.image_size == 16
  assert reproduce.row_config(config, 'resnet18', 'none').bido.a1 == 0.0
  assert reproduce.row_config(config, 'densenet121', 'ssf').model.skip[-1] == 0.01  # SSF's k follows the model
  tts = reproduce.row_config(config, 'densenet121', 'tts')
  assert tts.job == 'tts' and tts.model.skip_mode == 'scale' and tts.tts.stage1_epochs == 1


def test_paper_protocol_per_architecture_settings_and_required_files(tmp_path):
  """The paper preset: the RoLSS code's batch sizes and initialisation per architecture, every job in
  float32-highest, PPA's FID inputs, no antialiasing, and no silent start without the protocol's files."""
  config = paper.get_config()
  assert config.study.per_architecture.densenet121.batch_size == 64
  assert config.study.per_architecture.resnet101.batch_size == 128
  assert (config.metrics.fid_quirk, config.metrics.antialias, config.attacks.ppa.attack.antialias) == (
      True,
      False,
      False,
  )
  assert config.study.checkpoint == 'best' and config.study.evaluation_model == 'import'
  config.study.architectures = ('resnet34', 'densenet121')
  config.study.defenses = ('none',)
  config.attacks.ppa.generator.dir = str(tmp_path)
  config.classifier.data.manual_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r'config.study.per_architecture.resnet34.init_file=.*ImageNet'):
    jobs.validate_config(config)
  weights = tmp_path / 'resnet34.pth'
  weights.write_bytes(b'')
  config.study.per_architecture.resnet34.init_file = str(weights)
  with pytest.raises(ValueError, match=r'config.evaluation_model.model.init_file=.*inception_v3_facescrub'):
    jobs.validate_config(config)  # DenseNets train from scratch: only the evaluation model is missing now
  config.evaluation_model.model.init_file = str(weights)
  jobs.validate_config(config)
  densenet = reproduce.row_config(config, 'densenet121', 'none')
  resnet = reproduce.row_config(config, 'resnet34', 'none')
  assert (densenet.train.batch_size, densenet.model.init_file) == (64, '')
  assert (resnet.train.batch_size, resnet.model.init_file) == (128, str(weights))
  assert resnet.matmul_precision == densenet.matmul_precision == 'highest'
  evaluation = reproduce.evaluation_config(config)  # 'import': the file as it is
  assert evaluation.train.epochs == 0 and tuple(evaluation.model.init_reinit) == ()
  assert evaluation.model.transform_input and evaluation.model.name == 'inception_v3'
  # from_scratch trains without ImageNet files and without an evaluation-model file in 'train' mode.
  config.study.per_architecture.resnet34.init_file = config.evaluation_model.model.init_file = ''
  config.study.from_scratch, config.study.evaluation_model = True, 'train'
  jobs.validate_config(config)
  assert reproduce.row_config(config, 'resnet34', 'none').model.init_file == ''


@pytest.mark.slow
def test_rerun_skips_finished_work_and_redoes_what_is_missing(tiny_study):
  config, workdir, rows = tiny_study
  train_results = os.path.join(workdir, 'resnet18', 'none', 'train', 'results.json')
  stamp = os.path.getmtime(train_results)
  evaluation_path = os.path.join(workdir, 'resnet18', 'tts', 'ppa', 'evaluation.json')
  os.remove(evaluation_path)
  again = jobs.run(config, workdir)
  assert os.path.getmtime(train_results) == stamp  # not retrained
  assert os.path.exists(evaluation_path)  # the missing evaluation was redone, with the same result
  for a, b in zip(rows, again):
    assert a['attack_acc_top1'] == b['attack_acc_top1'] and a['knn_dist_eval'] == pytest.approx(b['knn_dist_eval'])


def _private_images(data_config, classes, per_class=4):
  """'Attack' images that are private training images of their classes, rendered at any size by the
  same resize as the private reference images (PIL's, from the stored originals)."""
  originals = [(image, label) for image, label in evaluate.private_originals(data_config, classes)]
  chosen = [(image, label) for c in classes for image, label in [o for o in originals if o[1] == c][:per_class]]
  render = lambda size: np.stack([evaluate.resize_original(image, size, evaluate.PIL_RESIZE) for image, _ in chosen])
  targets = np.array([label for _, label in chosen])
  return evaluate.AttackImages(render, targets, np.tile([0.9, 0.9, 0.2, 0.2], len(classes)))


def _metrics(**fields):
  from configs import evaluate as evaluate_config  # pylint: disable=g-import-not-at-top

  metrics = evaluate_config.metrics_section()
  metrics.update(fields)
  return metrics


@pytest.mark.slow
def test_evaluation_of_private_images_has_known_answers(tiny_study):
  """Final 'attack' images that are private training images: KNN distance 0, and the attack accuracy
  is the evaluation model's accuracy on those images."""
  _, workdir, _ = tiny_study
  eval_dir = os.path.join(workdir, 'evaluation_model')
  target_config = json.load(open(os.path.join(workdir, 'resnet18', 'none', 'ppa', 'attack.json')))['target_config']
  final = _private_images(target_config['data'], (1, 3))
  results, records = evaluate.evaluate_images(final, None, target_config['data'], eval_dir, _metrics(batch_size=16))
  assert results['knn_dist_eval'] < 1e-6  # each image's nearest same-class private image is itself
  model, variables, _, step, _ = checkpoint.load_classifier(eval_dir)
  assert results['evaluation_step'] == step
  predicted = np.argmax(np.asarray(model.apply(variables, final.render(16))), -1)
  assert results['attack_acc_top1'] == pytest.approx(np.mean(predicted == final.targets))
  assert results['target_accepts'] == 0.5
  np.testing.assert_array_equal(records['targets'], final.targets)
  # Fakes that are a subset of the reals sit inside the real balls: precision 1 (PRDC, per class).
  assert results['prdc_precision'] == 1.0


def test_fid_inputs_standard_and_ppa_quirk():
  images = np.array([-1.0, 0.0, 1.0])
  np.testing.assert_array_equal(evaluate.fid_inputs(images, quirk=False), images)
  np.testing.assert_array_equal(evaluate.fid_inputs(images, quirk=True), [-3.0, -1.0, 1.0])


@pytest.mark.slow
def test_private_images_are_resized_once_from_the_originals(tiny_study):
  """KNN references: PIL's resize of the stored image (PPA's Resize before ToTensor); FID references:
  torchvision's tensor resize, antialiased or not as metrics.antialias says."""
  _, workdir, _ = tiny_study
  data = json.load(open(os.path.join(workdir, 'resnet18', 'none', 'ppa', 'attack.json')))['target_config']['data']
  original, label = next(evaluate.private_originals(data, [2]))
  assert label == 2 and original.shape == (8, 8, 1)  # the stored 8x8 digit, not the 16px training input
  pil = evaluate.resize_original(original, 5, evaluate.PIL_RESIZE)
  np.testing.assert_array_equal(pil, augment.normalize(augment.to_pil(original).resize((5, 5), PIL.Image.BILINEAR)))
  as_float = original[None].astype(np.float32) / 127.5 - 1
  for antialias in (True, False):
    np.testing.assert_allclose(
        evaluate.resize_original(original, 5, antialias), transforms.resize(as_float, 5, antialias, xp=np)[0], atol=1e-6
    )
  assert np.abs(evaluate.resize_original(original, 5, True) - evaluate.resize_original(original, 5, False)).max() > 0.01


@pytest.mark.slow
def test_facenet_distance_of_private_images_is_zero(tiny_study, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed')
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  torch_compat.import_torchvision()
  irv1 = pytest.importorskip('facenet_pytorch.models.inception_resnet_v1', reason='facenet-pytorch is not installed')
  torch.manual_seed(0)
  torch.save(irv1.InceptionResnetV1(pretrained=None, classify=False).state_dict(), tmp_path / 'facenet.pt')
  _, workdir, _ = tiny_study
  data = json.load(open(os.path.join(workdir, 'resnet18', 'none', 'ppa', 'attack.json')))['target_config']['data']
  final = _private_images(data, (2,))  # FaceNet at 160px is slow on CPU
  results, _ = evaluate.evaluate_images(
      final,
      None,
      data,
      os.path.join(workdir, 'evaluation_model'),
      _metrics(facenet_file=str(tmp_path / 'facenet.pt'), batch_size=16),
  )
  assert 0 <= results['knn_dist_facenet'] < 1e-6 and results['knn_dist_eval'] < 1e-6


def test_evaluation_refuses_unfinished_attacks(tmp_path):
  with pytest.raises(evaluate.EvaluationError, match='no attack.json'):
    evaluate.evaluate_attack(str(tmp_path), str(tmp_path), _metrics())
  json.dump({'settings': {}}, open(tmp_path / 'attack.json', 'w'))
  with pytest.raises(evaluate.EvaluationError, match='no final latents'):
    evaluate.evaluate_attack(str(tmp_path), str(tmp_path), _metrics())


def test_study_config_errors_name_the_field(tmp_path, tfds_dir):
  config = tiny_study_config(tmp_path, tfds_dir)
  config.study.defenses = ('none', 'dropout')
  with pytest.raises(ValueError, match=r"config.study.defenses=.*'dropout' is not a defense"):
    jobs.validate_config(config)
  config = tiny_study_config(tmp_path, tfds_dir)
  config.classifier.model.width = -1
  with pytest.raises(ValueError, match='config.model.width=-1'):
    jobs.validate_config(config)


def test_evaluate_job_checks_its_inputs_first(tmp_path):
  from configs import evaluate as evaluate_config  # pylint: disable=g-import-not-at-top

  config = evaluate_config.get_config()
  with pytest.raises(ValueError, match='config.evaluation.workdir'):
    jobs.validate_config(config)
  config.evaluation.workdir = str(tmp_path)
  config.metrics.facenet_file = str(tmp_path / 'vggface2.pt')
  with pytest.raises(FileNotFoundError, match='config.metrics.facenet_file=.*no such file'):
    jobs.validate_config(config)
  config.metrics.facenet_file = ''
  with pytest.raises(evaluate.EvaluationError, match='no attack.json'):
    jobs.run(config, str(tmp_path / 'attack'))


def test_eval_model_config_is_inception_v3_at_299():
  from configs import eval_model  # pylint: disable=g-import-not-at-top

  config = eval_model.get_config()
  jobs.validate_config(config)
  assert config.model.name == 'inception_v3' and config.data.image_size == 299
  assert tuple(config.optim.lr_milestones) == (80,) and tuple(config.model.init_reinit) == ('fc',)
  assert config.model.transform_input and config.model.aux_logits and config.train.aux_loss_weight == 1.0
  assert tuple(eval_model.get_config('celeba').optim.lr_milestones) == (75, 90)
  imported = eval_model.get_config('import')
  assert imported.train.epochs == 0 and tuple(imported.model.init_reinit) == ()
  with pytest.raises(ValueError, match='config.train.epochs=0: 0 means "use config.model.init_file as it is"'):
    jobs.validate_config(imported)  # no file named
  config.model.skip = (1, 1, 1, 1)
  with pytest.raises(ValueError, match='config.model.skip=.*inception_v3 has 0 stages'):
    jobs.validate_config(config)
  jobs.validate_config(eval_model.get_config('demo'))


@pytest.mark.slow
def test_gradient_flow_reads_every_stage(tiny_study):
  _, workdir, _ = tiny_study
  norms = gradient_flow.stage_gradient_norms(os.path.join(workdir, 'resnet18', 'none', 'ppa'))
  assert list(norms) == [f'stage{i}_input' for i in range(1, 5)]
  assert all(v > 0 for v in norms.values())


@pytest.mark.slow
def test_repvgg_deployed_form_has_the_same_gradients(tmp_path):
  results = repvgg_equivalence.repvgg_equivalence(width=4, image_size=16, num_blocks=(1, 2, 1, 1))
  train = results['stage_grad_norm']['training form (skips)']
  deployed = results['stage_grad_norm']['deployed form (folded)']
  for stage in train:
    assert deployed[stage] == pytest.approx(train[stage], rel=1e-10)
  assert results['max_rel_diff_deployed'] < 1e-10 < 1e-3 < results['max_rel_diff_removed']
  path = repvgg_equivalence.plot_repvgg_equivalence(str(tmp_path / 'repvgg.png'), results)
  assert os.path.getsize(path) > 1000


@pytest.mark.slow
def test_study_runs_four_attacks_on_every_target(tmp_path, tfds_dir):
  """PPA and IF-GMI (StyleGAN2 prior), GMI (a shared low-resolution GAN) and PLG-MI (a conditional GAN the
  study trains per cell for that cell's target) on the same cells: a row per cell and attack."""
  from configs import attack_gmi, attack_ifgmi, attack_plgmi, plgmi_gan  # pylint: disable=g-import-not-at-top
  from mi_jax.gan64 import checkpoint as gan_io, networks as gan_networks  # pylint: disable=g-import-not-at-top

  G = networks.Generator(GEN)
  save_generator(str(tmp_path / 'generator'), GEN, jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim))))
  gan = gan_networks.GanConfig(resolution=16, img_channels=1, z_dim=8, width=4)
  images = jnp.zeros((2, 16, 16, 1))
  gan_io.save_gan(
      str(tmp_path / 'gan'),
      gan,
      'wgan_gp',
      gan_networks.Generator(gan).init(jax.random.key(1), jnp.zeros((2, 8))),
      gan_networks.WGANCritic(gan).init(jax.random.key(2), images),
      source={'test': True},
  )
  config = tiny_study_config(tmp_path, tfds_dir)
  config.study.defenses = ('rolss',)  # one cell: the attacks are what this test is about
  config.study.attacks = ('ppa', 'gmi', 'ifgmi', 'plgmi')
  config.attacks.gmi = attack_gmi.get_config()
  config.attacks.gmi.generator.dir = str(tmp_path / 'gan')
  config.attacks.gmi.attack.update(num_classes=0, batch_size=5, steps=3, restarts=2)
  config.attacks.ifgmi = attack_ifgmi.get_config()
  config.attacks.ifgmi.generator.dir = str(tmp_path / 'generator')
  config.attacks.ifgmi.attack.update(
      search_space_size=24,
      num_candidates=2,
      final_samples=2,
      batch_size=10,
      truncation_cutoff=2,
      center_crop=0,
      stage_steps=(2, 1, 1),
      store_size=0,
      final_iterations=2,
  )
  config.attacks.plgmi = attack_plgmi.get_config()
  config.attacks.plgmi.attack.update(num_classes=0, batch_size=5, restarts=2, keep=2, steps=3)
  config.attacks.plgmi.generator_job = plgmi_gan.get_config('tiny,steps=2')
  config.attacks.plgmi.generator_job.data.data_dir = tfds_dir
  workdir = str(tmp_path / 'study')
  rows = jobs.run(config, workdir)
  assert sorted((r['defense'], r['attack']) for r in rows) == sorted(
      ('RoLSS', a) for a in ('ppa', 'gmi', 'ifgmi', 'plgmi')
  )
  gmi_rows = [r for r in rows if r['attack'] == 'gmi']
  assert all(r['images'] == 5 and 0 <= r['attack_acc_top1'] <= 1 for r in gmi_rows)  # one kept per class
  assert all(r['images'] == 10 for r in rows if r['attack'] in ('ifgmi', 'plgmi'))  # 2 per class, 5 classes
  assert '| resnet18 | RoLSS | ifgmi |' in open(os.path.join(workdir, 'results.md')).read()
  # Each cell's PLG-MI GAN learned from that cell's target, and its attack used it.
  for defense in ('rolss',):
    settings = attack_outputs.read_attack(os.path.join(workdir, 'resnet18', defense, 'plgmi'))['settings']
    assert settings['generator']['dir'] == os.path.join(workdir, 'resnet18', defense, 'plgmi_generator', 'gan')
    gan_run = json.load(open(os.path.join(workdir, 'resnet18', defense, 'plgmi_generator', 'results.json')))
    assert gan_run['kind'] == 'plgmi' and 'generator_job' not in settings
  for name in (
      'gradient_flow_resnet18_ppa.png',
      'gradient_flow_resnet18_ifgmi.png',
      'gradient_flow_resnet18_plgmi.png',
  ):
    assert os.path.getsize(os.path.join(workdir, 'figures', name)) > 1000


@pytest.mark.slow
def test_sweeps_add_their_cells_share_equal_ones_and_plot_against_the_value(tiny_study):
  """The three ablations in the tiny study's workdir: stage-wise removal trains one cell per stage, SSF k=0/1
  and TTS's M=1 are cells trained already (RoLSS-like stage 4 removal, No defense, TTS) and are not retrained."""
  config, workdir, _ = tiny_study
  config = ml_collections.ConfigDict(config.to_dict())
  config.study.sweeps = ('stage_removal', 'ssf_k', 'tts_switch')
  config.study.sweep_ssf_k = (0.0, 0.5, 1.0)
  config.study.sweep_tts_stage1_fractions = (0.05, 0.5)  # both M = 1 at 2 epochs: one point
  jobs.validate_config(config)
  directories = reproduce.cell_directories(config, workdir)
  arch = os.path.join(workdir, 'resnet18')
  assert directories['resnet18', 'ssf_k1', 42] == os.path.join(arch, 'none')
  assert directories['resnet18', 'ssf_k0', 42] == os.path.join(arch, 'remove_stage4')
  assert directories['resnet18', 'tts_m1', 42] == os.path.join(arch, 'tts')
  trained_before = os.path.getmtime(os.path.join(arch, 'none', 'train', 'results.json'))
  rows = jobs.run(config, workdir)
  assert os.path.getmtime(os.path.join(arch, 'none', 'train', 'results.json')) == trained_before
  by_key = {r['key']: r for r in rows}
  for stage in (1, 2, 3, 4):
    removed = by_key[f'remove_stage{stage}']
    assert removed['sweep'] == 'stage_removal' and removed['value'] == stage
    saved = json.load(open(os.path.join(arch, f'remove_stage{stage}', 'ppa', 'attack.json')))
    assert saved['target_config']['model']['skip'] == [0.0 if i == stage else 1.0 for i in (1, 2, 3, 4)]
  assert [r['value'] for r in rows if r['sweep'] == 'ssf_k'] == [0.0, 0.5, 1.0]
  assert by_key['ssf_k1']['attack_acc_top1'] == by_key['none']['attack_acc_top1']  # the same cell
  assert by_key['ssf_k0']['acc'] == by_key['remove_stage4']['acc']
  assert by_key['tts_m1']['acc'] == by_key['tts']['acc'] and by_key['tts_m1']['value'] == 1.0
  for sweep in config.study.sweeps:
    assert os.path.getsize(os.path.join(workdir, 'figures', f'sweep_{sweep}_resnet18.png')) > 1000
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [r['sweep'] for r in table].count('stage_removal') == 4 and table[0]['acc_ci_low']


@pytest.mark.slow
def test_seeds_and_matched_accuracy_checkpoints(tiny_study):
  """Two seeds per cell in seed<S>/ directories, intervals across them, and per run the kept checkpoint whose
  test accuracy is closest to study.match_accuracy."""
  config, workdir, _ = tiny_study
  config = ml_collections.ConfigDict(config.to_dict())
  config.study.defenses = ('none',)
  config.study.seeds = (1, 2)
  config.study.checkpoint, config.study.match_accuracy = 'matched', 0.5
  jobs.validate_config(config)
  (row,) = jobs.run(config, workdir)
  assert row['seeds'] == [1, 2] and row['images'] == 2 * 5 * 2
  runs = json.load(open(os.path.join(workdir, 'results.json')))['runs']
  np.testing.assert_allclose(row['acc_ci'], np.clip(scores.t_interval([r['acc'] for r in runs]), 0, 1))
  for run in runs:
    train_dir = os.path.join(workdir, 'resnet18', 'none', f'seed{run["seed"]}', 'train')
    with open(os.path.join(train_dir, 'metrics.csv')) as f:
      evaluated = {int(r['step']): float(r['test_accuracy']) for r in csv.DictReader(f) if r['test_accuracy']}
    assert len(os.listdir(os.path.join(train_dir, 'checkpoints'))) >= len(evaluated)  # every one kept
    closest = min(evaluated, key=lambda step: (abs(evaluated[step] - 0.5), step))
    assert run['step'] == closest and run['acc'] == pytest.approx(evaluated[closest])
    saved = json.load(open(os.path.join(train_dir, '..', 'ppa', 'attack.json')))
    assert saved['target_config']['seed'] == run['seed']
  with pytest.raises(ValueError, match='config.study.match_accuracy'):
    config.study.match_accuracy = 0.0
    jobs.validate_config(config)


def test_cpu_preset_has_the_power_the_demo_lacks():
  """`:cpu`: the demo's matrix with 3 seeds per cell, 100 final images per row and seed (5 classes x 20), a
  DenseNet whose skip-less last block is 8 channels wide, and every cell distinct (36 targets)."""
  config = paper.get_config('cpu')
  jobs.validate_config(config)
  assert config.study.seeds == (1, 2, 3) and config.study.defenses == paper.DEFENSES
  attack = config.attacks.ppa.attack
  assert attack.final_samples * config.classifier.model.num_classes >= 100
  assert attack.final_samples <= attack.num_candidates
  assert config.classifier.model.width == 16  # DenseNet growth = width // 2
  directories = reproduce.cell_directories(config, '/study')
  assert len(set(directories.values())) == 2 * 6 * 3
  assert directories['densenet121', 'rolss', 2] == '/study/densenet121/rolss/seed2'


def _launch_overrides(config: ml_collections.ConfigDict, prefix: str = 'config') -> list[str]:
  """absl flags setting every field of `config` (nested sections become dotted names)."""
  flags = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flags += _launch_overrides(value, f'{prefix}.{key}')
    else:
      flags.append(f'--{prefix}.{key}={value!r}' if isinstance(value, tuple) else f'--{prefix}.{key}={value}')
  return flags


def _tiny_study_flags(config: ml_collections.ConfigDict, workdir, tasks: str, num_devices: int = 1) -> list[str]:
  """launch.py's arguments for the study in `config` (a tiny_study_config) as overrides of the demo preset."""
  small = {'model': {'width': 4}, 'train': {'batch_size': 32}}
  attack = config.attacks.ppa.attack
  fields = ('search_space_size', 'num_candidates', 'batch_size', 'steps', 'truncation_cutoff', 'final_samples')
  overrides = {
      'num_devices': num_devices,
      'study': {'tasks': tasks, 'architectures': config.study.architectures, 'defenses': config.study.defenses},
      'classifier': {'data': config.classifier.data.to_dict(), **small},
      'evaluation_model': {'data': config.evaluation_model.data.to_dict(), **small},
      'attacks': {
          'ppa': {
              'generator': {'dir': config.attacks.ppa.generator.dir},
              'attack': {k: attack[k] for k in fields + ('final_iterations',)},
          }
      },
      'analysis': {'repvgg': ''},
  }
  return [
      '--config=configs/paper.py:demo,epochs=2',
      f'--workdir={workdir}',
      *_launch_overrides(ml_collections.ConfigDict(overrides)),
  ]


def _flat(tree, prefix: str = '') -> dict:
  """{'a.b': leaf} of nested dicts (pytest.approx compares flat ones)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {k: v for key, value in tree.items() for k, v in _flat(value, f'{prefix}.{key}' if prefix else key).items()}


def _launch_study(config, workdir, tasks: str, num_devices: int = 1, **env) -> str:
  """launch.py running `tasks` of the study in one process with `num_devices` CPU devices; its log."""
  result = subprocess.run(
      [sys.executable, 'launch.py', *_tiny_study_flags(config, workdir, tasks)],
      cwd=REPO_ROOT,
      env=_env(num_devices, **env),
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert result.returncode == 0, f'study.tasks={tasks}:\n{result.stderr[-3000:]}'
  return result.stderr


# sbatch for scripts/slurm/study.sh: logs its arguments, runs the --wrap command (an --array's tasks one after
# the other, with SLURM's array variables) and prints a job id, as --parsable does.
FAKE_SBATCH = r"""#!/bin/bash
array=; wrap=
for arg in "$@"; do case $arg in --array=*) array=${arg#--array=};; --wrap=*) wrap=${arg#--wrap=};; esac; done
echo "$@" >> "$SBATCH_LOG"
if [[ -n $array ]]; then
  first=${array%-*}; last=${array#*-}
  for i in $(seq "$first" "$last"); do
    SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_MIN=$first SLURM_ARRAY_TASK_COUNT=$((last - first + 1)) \
      bash -c "$wrap" 1>&2 || exit 1
  done
else
  bash -c "$wrap" 1>&2 || exit 1
fi
wc -l < "$SBATCH_LOG"
"""


@pytest.mark.slow
def test_a_study_fanned_out_by_the_slurm_script_gathers_the_single_process_table(tiny_study, tmp_path):
  """scripts/slurm/study.sh (sbatch faked: each job runs at once, in its own process): the evaluation model, an
  array task per cell, then the gather; its table and every seed's row equal those of one process running the
  whole study."""
  config = tiny_study[0]
  single, fanned = tmp_path / 'single', tmp_path / 'fanned'
  _launch_study(config, single, 'all')  # in a process like the others: pytest's own has 8 devices, whose sums differ
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(FAKE_SBATCH)
  (bin_dir / 'sbatch').chmod(0o755)
  flags = _tiny_study_flags(config, fanned, 'all')
  overrides = [f for f in flags if f.startswith('--config.') and not f.startswith('--config.study.tasks')]
  env = _env(1, SBATCH_LOG=str(tmp_path / 'sbatch.log'), STUDY_CONFIG=flags[0].split('=', 1)[1])
  env['PATH'] = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ['PATH']])
  result = subprocess.run(
      ['bash', 'scripts/slurm/study.sh', str(fanned), *overrides],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=1200,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'The study has 2 tasks.' in result.stdout
  jobs_submitted = (tmp_path / 'sbatch.log').read_text().splitlines()
  assert [j.split('--job-name=')[1].split()[0] for j in jobs_submitted] == ['mi-eval', 'mi-cells', 'mi-gather']
  assert '--array=0-1 --dependency=afterok:1' in jobs_submitted[1] and '--dependency=afterany:2' in jobs_submitted[2]
  with open(single / 'results.json') as f:
    expected = json.load(f)
  with open(fanned / 'results.json') as f:
    gathered = json.load(f)
  assert gathered['missing'] == [] and len(gathered['runs']) == 2
  assert gathered['rows'] == expected['rows'] and gathered['runs'] == expected['runs']
  assert (single / 'results.md').read_text() == (fanned / 'results.md').read_text()


@pytest.mark.slow
def test_a_study_task_on_two_processes_equals_one_process_with_two_devices(tiny_study, tmp_path):
  """A fanned-out cell's attack and evaluation by two processes (one device each, as on two nodes) equal one
  process's over two devices, to float rounding (the cross-process sums add in another order: 4e-7 relative seen
  in confidences, the same images chosen), and only process 0 writes. Both start from the same trained target: 2
  epochs amplify that rounding to 4e-4 in the test loss (training across processes is tested in test_reliability).
  """
  config = tiny_study[0]
  one, two = tmp_path / 'one_process', tmp_path / 'two_processes'
  _launch_study(config, one, 'evaluation')
  _launch_study(config, one, '0', num_devices=2)
  shutil.copytree(one / 'evaluation_model', two / 'evaluation_model')
  shutil.copytree(one / 'resnet18' / 'none' / 'train', two / 'resnet18' / 'none' / 'train')
  results = _launch_processes(_tiny_study_flags(config, two, '0', num_devices=0))
  for i, result in enumerate(results):
    assert result.returncode == 0, f'process {i}:\n{result.stderr[-3000:]}'
    assert 'resnet18 / No defense / ppa: attack' in result.stderr
  for name in ('attack.json', 'evaluation.json'):
    with open(one / 'resnet18' / 'none' / 'ppa' / name) as f, open(two / 'resnet18' / 'none' / 'ppa' / name) as g:
      expected, got = json.load(f), json.load(g)
    expected.pop('settings', None), got.pop('settings', None)  # num_devices: 2 against 0 (every device)
    assert _flat(got) == pytest.approx(_flat(expected), rel=1e-5, nan_ok=True), name
  arrays = sorted(os.path.relpath(p, one / 'resnet18') for p in (one / 'resnet18').rglob('*.npz'))
  assert 'none/ppa/evaluation.npz' in arrays
  for name in arrays:
    with np.load(one / 'resnet18' / name) as a, np.load(two / 'resnet18' / name) as b:
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=f'{name}: {key}')
  written = lambda root: sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
  assert written(two / 'resnet18') == written(one / 'resnet18')


def test_study_tasks_are_listed_and_need_the_evaluation_model_first(tiny_study, tmp_path, caplog):
  config, _, _ = tiny_study
  config = ml_collections.ConfigDict(config.to_dict())
  config.study.tasks = 'list'
  with caplog.at_level('INFO'):
    assert jobs.run(config, str(tmp_path)) == []
  assert (
      'The study has 2 tasks' in caplog.text and '0  resnet18/none' in caplog.text and '1  resnet18/tts' in caplog.text
  )
  config.study.tasks = '1'
  with pytest.raises(FileNotFoundError, match="holds no trained evaluation model.*study.tasks='evaluation' first"):
    jobs.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []  # nothing started
  config.study.tasks = '2'
  with pytest.raises(ValueError, match=r'study.tasks.*the study has 2 tasks \(0 to 1\)'):
    jobs.validate_config(config)


def test_a_gather_before_every_task_finished_tables_the_finished_ones(tiny_study, tmp_path, caplog):
  config, workdir, rows = tiny_study
  copy = tmp_path / 'study'
  shutil.copytree(workdir, copy)
  os.remove(copy / 'resnet18' / 'tts' / 'ppa' / 'evaluation.json')
  config = ml_collections.ConfigDict(config.to_dict())
  config.study.tasks = 'gather'
  with caplog.at_level('WARNING'):
    gathered = jobs.run(config, str(copy))
  assert 'leaves out 1 unfinished task(s)' in caplog.text and '1  resnet18/tts' in caplog.text
  same = lambda rows: json.dumps(rows, sort_keys=True)  # NaN fields (a value outside sweeps) compare equal
  assert same(gathered) == same([r for r in rows if r['key'] == 'none'])
  with open(copy / 'results.json') as f:
    assert json.load(f)['missing'] == ['resnet18 / TTS']
  assert 'Not finished, left out of the table:** resnet18 / TTS.' in (copy / 'results.md').read_text()


def test_study_tasks_select_indices_slices_and_slurm_array_shares():
  select = lambda tasks, environ={}: list(reproduce.selected_tasks(tasks, 7, environ))
  assert select('all') == list(range(7)) and select('gather') == [] and select('evaluation') == []
  assert select('3') == [3] and select('2:5') == [2, 3, 4]
  assert select('slurm', {'SLURM_ARRAY_TASK_ID': '1', 'SLURM_ARRAY_TASK_COUNT': '3'}) == [1, 4]
  assert select('slurm', {'SLURM_ARRAY_TASK_ID': '12', 'SLURM_ARRAY_TASK_MIN': '10'}) == [2]  # one task per index
  for bad, message in (('7', 'has 7 tasks'), ('3:3', 'has 7 tasks'), ('x', 'expected'), ('slurm', 'not set')):
    with pytest.raises(ValueError, match=message):
      select(bad)
