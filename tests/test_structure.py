"""The package's seams: no import circles, layers depend downward, families are asked, not guessed by name."""

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO_ROOT
from mi_jax import models

PACKAGES = ('mi_jax',)  # mi_jax/stylegan links to third_party/stylegan_jax


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO_ROOT)[: -len('.py')].split(os.sep)
  return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def _modules() -> dict[str, str]:
  """{dotted module name: file} of every module of the packages."""
  found = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(REPO_ROOT, package), followlinks=True):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          found[_module_name(path)] = path
  return found


def import_graph() -> dict[str, set[str]]:
  """module -> the modules it imports (anywhere in it, functions included), for the packages and configs.

  `from a.b import c` is an edge to a.b.c when that is a module, else to a.b.
  """
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [
            f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules else node.module
            for alias in node.names
        ]
      elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against this package
        base = name.split('.')[: len(name.split('.')) - node.level + (1 if path.endswith('__init__.py') else 0)]
        module = '.'.join(base + ([node.module] if node.module else []))
        targets = [f'{module}.{alias.name}' if f'{module}.{alias.name}' in modules else module for alias in node.names]
      else:
        continue
      edges.update(t for t in targets if t.split('.')[0] in PACKAGES + ('configs',))
    graph[name] = edges - {name}
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_no_import_circles():
  graph = import_graph()
  assert {'mi_jax.jobs', 'mi_jax.models.resnet', 'mi_jax.stylegan.networks'} <= set(graph)  # the walk sees it all
  assert _cycles(graph) == []
  # The finder finds circles: a made-up one is reported.
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_layers_depend_downward():
  graph = import_graph()
  to_configs = {
      m: sorted(e for e in edges if e.startswith('configs'))
      for m, edges in graph.items()
      if m.startswith(PACKAGES) and any(e.startswith('configs') for e in edges)
  }
  assert to_configs == {}, 'the library must not read config files'
  metrics_to_attacks = {
      m: sorted(e for e in edges if e.startswith('mi_jax.attacks'))
      for m, edges in graph.items()
      if m.startswith('mi_jax.metrics') and any(e.startswith('mi_jax.attacks') for e in edges)
  }
  assert metrics_to_attacks == {}, 'metrics read attacks through mi_jax.attack_outputs only'
  # jobs.py reaches the job modules through JOBS (importlib), not by import statements.
  assert not any(e.startswith(('mi_jax.attacks', 'mi_jax.train', 'mi_jax.metrics')) for e in graph['mi_jax.jobs'])


def test_no_family_is_recognised_by_its_name():
  """Traits come from the registry (models.family_of), never from a model-name prefix."""
  families = sorted(
      {models.family_of(n).name for n in models.model_names()}
      | {re.match(r'[a-z]+', n).group(0) for n in models.model_names()}
  )
  pattern = re.compile(r"""startswith\(\(?['"](%s)""" % '|'.join(families))
  offenders = []
  for root in ('mi_jax', 'configs'):
    for directory, _, files in os.walk(os.path.join(REPO_ROOT, root)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          offenders += [
              f'{os.path.relpath(path, REPO_ROOT)}:{i + 1}' for i, line in enumerate(open(path)) if pattern.search(line)
          ]
  assert offenders == []
  assert pattern.search("name.startswith('densenet')") and pattern.search("x.startswith(('resnet', 'a'))")


def test_the_wheel_installs_only_mi_jax(tmp_path):
  """third_party/stylegan_jax ships as mi_jax.stylegan: no top-level `third_party` in site-packages."""
  source = tmp_path / 'source'  # a copy: setuptools' build/ stays out of the working tree
  for name in ('mi_jax', 'third_party'):
    shutil.copytree(os.path.join(REPO_ROOT, name), source / name, symlinks=True)
  for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO_ROOT, name), source / name)
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'wheel',
          str(source),
          '--no-deps',
          '--no-build-isolation',
          '-q',
          '-w',
          str(tmp_path),
      ],
      check=True,
      cwd=tmp_path,
      capture_output=True,
  )
  names = zipfile.ZipFile(next(tmp_path.glob('mi_jax-*.whl'))).namelist()
  assert {n.split('/')[0] for n in names if not n.split('/')[0].endswith('.dist-info')} == {'mi_jax'}
  assert 'mi_jax/stylegan/networks.py' in names and not any(n.startswith('third_party') for n in names)
