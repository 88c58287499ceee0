"""notebooks/aprn_colab.ipynb as Colab runs it: executed cell by cell in a Python kernel
(nbclient) on the CPU against the tiny config, its install cell skipped by its parameter."""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "aprn_colab.ipynb")


def _notebook():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  return notebook


def _parameters_index(notebook):
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, "one cell tagged 'parameters'"
  return tagged[0]


def test_committed_without_outputs_and_parameters_before_any_other_code():
  notebook = _notebook()
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  assert notebook.cells.index(code[0]) == _parameters_index(notebook)
  for name in ("INSTALL", "CONFIG", "WORKDIR", "OVERRIDES", "EXPORT"):
    assert f"\n{name} = " in "\n" + code[0].source


def _text(cell):
  return "".join(out.get("text", "") for out in cell.get("outputs", [])
                 if out.output_type == "stream")


# Trains, evaluates twice and exports: about 1.5 minutes on 2 cores.
def test_notebook_trains_shows_the_report_evaluates_and_exports_on_cpu(tmp_path):
  notebook = _notebook()
  workdir = tmp_path / "run"
  overrides = [f"--config.data.data_dir={tmp_path / 'data'}",
               "--config.train.baseline_epochs=1", "--config.train.aprn_epochs=1",
               "--config.aprn.d_warmup_steps=4"]
  # As papermill does: a cell after the parameters' sets the test's values.
  notebook.cells.insert(_parameters_index(notebook) + 1, nbformat.v4.new_code_cell(
      f"INSTALL = False\nPROJECT_DIR = {REPO!r}\nCONFIG = 'configs/tiny.py'\n"
      f"WORKDIR = {str(workdir)!r}\nOVERRIDES = {overrides!r}\nEXPORT = 'stablehlo'"))
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  text = "".join(_text(cell) for cell in notebook.cells)
  assert "accelerator: cpu; config: configs/tiny.py" in text
  assert "[aprn] 24 steps in " in text and "restored the recognizer" in text
  figures = sorted(os.listdir(workdir / "figures"))
  shown = [out for cell in notebook.cells for out in cell.get("outputs", [])
           if out.output_type == "display_data" and "image/png" in out.get("data", {})]
  assert len(shown) == len(figures) >= 10
  markdown = [out["data"]["text/markdown"] for cell in notebook.cells
              for out in cell.get("outputs", []) if "text/markdown" in out.get("data", {})]
  assert any("| cfp_fp | accuracy |" in m for m in markdown)
  exported = [name for name in os.listdir(workdir / "export") if name.endswith(".stablehlo")]
  assert len(exported) == 1 and exported[0] + ".json" in os.listdir(workdir / "export")
