"""Model-inversion attacks, and how one plugs into the study.

An attack is a job (mi_jax/jobs.py) whose config has the sections
  target      workdir, checkpoint     the classifier to invert ('latest', 'best' or a step);
  generator   dir                     the prior;
  evaluation  workdir, checkpoint     optional: an evaluation model to report attack accuracy with;
  attack                              the attack's own settings;
whose `run(config, workdir)` resumes from its own outputs, and which leaves the files that
mi_jax/attack_outputs.py describes (attack.json, final/class_<c>.npz, optimized/batch_<i>.npz), so
that evaluation, the analyses and the study read every attack alike. Adding an attack is one module
(its job), one line in JOBS and one line here; the study runs architectures x defenses x attacks.
"""

# Study name of an attack -> its job.
ATTACKS = {
    'ppa': 'attack_ppa',  # Plug & Play Attack, StyleGAN2 prior (ppa.py)
    'ifgmi': 'attack_ifgmi',  # IF-GMI, PPA then the generator's intermediate features (ifgmi.py)
    'gmi': 'attack_gmi',  # GMI, the low-resolution GAN prior (gmi.py); LOMMA through attack.lomma
    'kedmi': 'attack_kedmi',  # KEDMI, a distribution per identity (gmi.py); LOMMA through attack.lomma
    'plgmi': 'attack_plgmi',  # PLG-MI, a conditional GAN trained on the target's pseudo-labels (plgmi.py)
}
