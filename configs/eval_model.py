"""The evaluation model: an Inception-v3 trained on the target's private training split.

Its top-1/top-5 on the final attack images is the attack accuracy; its penultimate features
give the evaluation KNN distance. PPA's recipe (Plug-and-Play-Attacks and the RoLSS code,
configs/training/evaluation/Inception_V3_FaceScrub.yaml): torchvision's Inception-v3 with its
auxiliary head, ImageNet initialisation (which makes torchvision set transform_input=True),
299px, Adam 1e-3, x0.1 at epoch 80 (FaceScrub; [75, 90] for CelebA, `:celeba`), 100 epochs,
batch 128, loss = CE + CE(aux) (models/classifier.py adds them with weight 1).

Train one:

  python launch.py --config=configs/eval_model.py --workdir=/ckpt/inception_facescrub \\
      --config.data.manual_dir=/data/facescrub --config.model.init_file=~/weights/inception_v3_google-0cc3c7bd.pth

Or use PPA's released file as it is (`:import`: train.epochs = 0, the head and every weight from the
file; the auxiliary head is ignored, it plays no part in evaluation; the job evaluates it on the test
split and writes a checkpoint the attack and the metrics read):

  python launch.py --config=configs/eval_model.py:import --workdir=/ckpt/inception_facescrub \\
      --config.data.manual_dir=/data/facescrub --config.model.init_file=~/weights/inception_v3_facescrub.pt

A file that is not such a model (another class count, missing or misshapen weights) stops the job
with the list of what does not fit.

Demo (`:demo`): Inception-v3 needs inputs of at least 75px (its auxiliary head 299px) and is slow
on CPU, so the demo's evaluation model is a narrow ResNet-34 with another seed on the same private
digits.
"""

from configs import baseline, common
from mi_jax.train import trainer


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, celeba=False, **{'import': False})
  if arg.demo or arg.tiny:
    config = baseline.get_config(('demo' if arg.demo else 'tiny') + f',epochs={arg.epochs}')
    config.model.name = 'resnet34'
    config.seed = 7
    return config
  config = common.base_config()
  config.model.name = 'inception_v3'
  config.model.skip = ()
  config.model.transform_input = True  # torchvision forces it with ImageNet weights; PPA's model was trained so
  config.model.aux_logits = True
  config.model.init_reinit = ('fc',)  # the ImageNet heads (fc and AuxLogits/fc) get the new class count
  config.data.image_size = 299
  config.optim.lr_milestones = (75, 90) if arg.celeba else (80,)
  if arg.celeba:
    config.data.name = 'celeba1000'
    config.model.num_classes = 1000
  if arg['import']:
    trainer.as_imported(config)  # train.epochs = 0: the file is the model (its auxiliary head read past)
  return config
