"""The reproduce job on a tiny study (ResNet-18, three defenses, a random tiny generator), the
evaluation of an attack on inputs with known answers, and the analyses."""

import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import paper
from mi_jax import jobs, reproduce
from mi_jax.analysis import gradient_flow, repvgg_equivalence
from mi_jax.attacks import ppa
from mi_jax.metrics import evaluate
from third_party.stylegan_jax import networks, save_generator

GEN = networks.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2,
                               channel_base=64, channel_max=8)


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
  config.attack.generator_dir = str(root / 'generator')
  config.attack.settings.update(search_space_size=24, num_candidates=2, batch_size=10, steps=2, truncation_cutoff=2,
                                final_samples=2, final_iterations=2, eval_sizes=(16,))
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


def test_study_writes_the_table_and_the_figures(tiny_study):
  _, workdir, rows = tiny_study
  assert [r['defense'] for r in rows] == ['No defense', 'TTS']
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [r['defense'] for r in table] == ['No defense', 'TTS']
  for r in rows:
    assert 0 <= r['acc'] <= 1 and 0 <= r['attack_acc_top1'] <= r['attack_acc_top5'] <= 1
    assert r['knn_dist_eval'] >= 0 and math.isfinite(r['fid']) and r['fid_features'] == 'evaluation_model'
    assert r['images'] == 5 * 2
  assert math.isnan(rows[0]['delta'])
  # Δ is the attack-accuracy drop over the accuracy drop against the No-defense row.
  base, tts_row = rows
  if base['acc'] != tts_row['acc']:
    want = (base['attack_acc_top1'] - tts_row['attack_acc_top1']) / (base['acc'] - tts_row['acc'])
    assert tts_row['delta'] == pytest.approx(want)
  markdown = open(os.path.join(workdir, 'results.md')).read()
  assert '| resnet18 | TTS |' in markdown and 'Δ' in markdown
  for name in ('gradient_flow_resnet18.png', 'false_positives.png', 'accuracy_vs_attack.png'):
    assert os.path.getsize(os.path.join(workdir, 'figures', name)) > 1000
  # TTS: the target is stage 2, trained with the last stage's skips removed after stage 1.
  stage2 = json.load(open(os.path.join(workdir, 'resnet18', 'tts', 'train', 'stage2', 'results.json')))
  assert rows[1]['acc'] == stage2['test_accuracy']


def test_study_cells_take_the_defense_and_the_shared_settings(tmp_path, tfds_dir):
  config = tiny_study_config(tmp_path, tfds_dir)
  row = reproduce.row_config(config, 'densenet121', 'rolss_bido')
  assert (row.bido.a1, row.bido.a2) == (0.05, 0.5) and tuple(row.model.skip) == (1.0, 1.0, 1.0, 0.0)
  assert row.model.name == 'densenet121' and row.model.width == 4 and row.data.image_size == 16
  assert reproduce.row_config(config, 'resnet18', 'none').bido.a1 == 0.0
  assert reproduce.row_config(config, 'densenet121', 'ssf').model.skip[-1] == 0.01  # SSF's k follows the model
  tts = reproduce.row_config(config, 'densenet121', 'tts')
  assert tts.job == 'tts' and tts.model.skip_mode == 'scale' and tts.tts.stage1_epochs == 1


def test_rerun_skips_finished_work_and_redoes_what_is_missing(tiny_study):
  config, workdir, rows = tiny_study
  train_results = os.path.join(workdir, 'resnet18', 'none', 'train', 'results.json')
  stamp = os.path.getmtime(train_results)
  evaluation_path = os.path.join(workdir, 'resnet18', 'tts', 'attack', 'evaluation.json')
  os.remove(evaluation_path)
  again = jobs.run(config, workdir)
  assert os.path.getmtime(train_results) == stamp  # not retrained
  assert os.path.exists(evaluation_path)  # the missing evaluation was redone, with the same result
  for a, b in zip(rows, again):
    assert a['attack_acc_top1'] == b['attack_acc_top1'] and a['knn_dist_eval'] == pytest.approx(b['knn_dist_eval'])


def test_evaluation_of_private_images_has_known_answers(tiny_study, tmp_path):
  """Final 'attack' images that are private training images: KNN distance 0, and the attack accuracy
  is the evaluation model's accuracy on those images."""
  config, workdir, _ = tiny_study
  eval_dir = os.path.join(workdir, 'evaluation_model')
  target_config = json.load(open(os.path.join(workdir, 'resnet18', 'none', 'attack', 'attack.json')))['target_config']
  attack_dir = tmp_path / 'attack'
  _private_attack_dir(attack_dir, target_config)
  results = evaluate.evaluate_attack(str(attack_dir), eval_dir)
  assert results['knn_dist_eval'] < 1e-3  # each image's nearest same-class private image is itself (uint8 rounding)
  model, variables, _ = ppa.load_target(eval_dir)
  stored, targets, _ = evaluate.load_final_images(str(attack_dir))
  predicted = np.argmax(np.asarray(model.apply(variables, evaluate.images_at(stored, 16))), -1)
  assert results['attack_acc_top1'] == pytest.approx(np.mean(predicted == targets))
  assert results['target_accepts'] == 0.5
  saved = np.load(attack_dir / 'evaluation.npz')
  np.testing.assert_array_equal(saved['targets'], targets)


def test_fid_inputs_standard_and_ppa_quirk():
  images = np.array([-1.0, 0.0, 1.0])
  np.testing.assert_array_equal(evaluate.fid_inputs(images, quirk=False), images)
  np.testing.assert_array_equal(evaluate.fid_inputs(images, quirk=True), [-3.0, -1.0, 1.0])


def _private_attack_dir(attack_dir, target_config, classes=(1, 3), per_class=4):
  """An 'attack' whose final images are private training images of their classes."""
  images, labels = evaluate.private_images(target_config['data'], list(classes), 16, 64)
  (attack_dir / 'final').mkdir(parents=True)
  for c in classes:
    rows = np.flatnonzero(labels == c)[:per_class]
    uint8 = np.clip(np.round((images[rows] + 1) * 127.5), 0, 255).astype(np.uint8)
    np.savez(attack_dir / 'final' / f'class_{c:05d}.npz', scores=np.array([0.9, 0.9, 0.2, 0.2]), images_16=uint8)
  json.dump({'target_config': target_config}, open(attack_dir / 'attack.json', 'w'))


def test_facenet_distance_of_private_images_is_zero(tiny_study, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed')
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top
  torch_compat.import_torchvision()
  irv1 = pytest.importorskip('facenet_pytorch.models.inception_resnet_v1', reason='facenet-pytorch is not installed')
  torch.manual_seed(0)
  torch.save(irv1.InceptionResnetV1(pretrained=None, classify=False).state_dict(), tmp_path / 'facenet.pt')
  _, workdir, _ = tiny_study
  target_config = json.load(open(os.path.join(workdir, 'resnet18', 'none', 'attack', 'attack.json')))['target_config']
  _private_attack_dir(tmp_path / 'attack', target_config, classes=(2,))  # FaceNet at 160px is slow on CPU
  results = evaluate.evaluate_attack(str(tmp_path / 'attack'), os.path.join(workdir, 'evaluation_model'),
                                     facenet_file=str(tmp_path / 'facenet.pt'))
  assert 0 <= results['knn_dist_facenet'] < 1e-3 and results['knn_dist_eval'] < 1e-3


def test_evaluation_refuses_unfinished_attacks(tmp_path):
  with pytest.raises(evaluate.EvaluationError, match='no attack.json'):
    evaluate.evaluate_attack(str(tmp_path), str(tmp_path))
  with pytest.raises(evaluate.EvaluationError, match='no final images'):
    evaluate.load_final_images(str(tmp_path))


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
  config.model.skip = (1, 1, 1, 1)
  with pytest.raises(ValueError, match='config.model.skip=.*inception_v3 has 0 stages'):
    jobs.validate_config(config)
  jobs.validate_config(eval_model.get_config('demo'))


def test_gradient_flow_reads_every_stage(tiny_study):
  _, workdir, _ = tiny_study
  norms = gradient_flow.stage_gradient_norms(os.path.join(workdir, 'resnet18', 'none', 'attack'))
  assert list(norms) == [f'stage{i}_input' for i in range(1, 5)]
  assert all(v > 0 for v in norms.values())


def test_repvgg_deployed_form_has_the_same_gradients(tmp_path):
  results = repvgg_equivalence.repvgg_equivalence(width=4, image_size=16, num_blocks=(1, 2, 1, 1))
  train = results['stage_grad_norm']['training form (skips)']
  deployed = results['stage_grad_norm']['deployed form (folded)']
  for stage in train:
    assert deployed[stage] == pytest.approx(train[stage], rel=1e-10)
  assert results['max_rel_diff_deployed'] < 1e-10 < 1e-3 < results['max_rel_diff_removed']
  path = repvgg_equivalence.plot_repvgg_equivalence(str(tmp_path / 'repvgg.png'), results)
  assert os.path.getsize(path) > 1000
