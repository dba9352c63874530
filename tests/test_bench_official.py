"""The benchmark against the official label scripts: its input generator and its argument
errors (the benchmark itself needs a checkout of the official code and is not run here)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from nsrom_lib import bench_official as bo
from nsrom_lib.data.maps_io import load_label_inputs


def test_generated_inputs_have_the_official_layout(tmp_path):
    info = bo.make_official_inputs(tmp_path, cases=6, size=(30, 40), seed=1, workers=2)
    lines = (tmp_path / "data" / "train_cls.txt").read_text()
    assert lines.endswith("\n") and len(lines.splitlines()) == 6  # the scripts cut each line's end
    for name, classes in info["classes"].items():
        assert 1 <= len(classes) <= 3 and all(0 <= c < 20 for c in classes)
        sal = Image.open(tmp_path / "data" / "saliency_aug" / f"{name}.png")
        assert sal.mode == "L" and sal.size == (40, 30)
        pred = Image.open(tmp_path / "pred" / f"{name}.png")
        assert pred.mode == "P"
        assert set(np.unique(np.asarray(pred))) <= {0, *(c + 1 for c in classes)}
        for c in classes:
            for run in ("exp1", "exp2"):
                assert (tmp_path / "runs" / run / "attention" / f"{name}_{c}.png").is_file()
    inputs = load_label_inputs(
        tmp_path / "data" / "train_cls.txt", tmp_path / "data" / "saliency_aug",
        oacam_dir=tmp_path / "runs" / "exp2" / "attention",
        cam_dir=tmp_path / "runs" / "exp1" / "attention",
    )  # fmt: skip
    assert len(inputs.entries) == 6 and not inputs.missing_maps
    again = bo.make_official_inputs(tmp_path / "b", cases=6, size=(30, 40), seed=1, workers=1)
    assert again["classes"] == info["classes"]  # seeded: the same inputs whatever the workers
    p = "data/saliency_aug/2007_000003.png"
    assert (tmp_path / p).read_bytes() == (tmp_path / "b" / p).read_bytes()


def test_seg_path_and_folder_comparison(tmp_path):
    script = tmp_path / "gen_masked_label.py"
    script.write_text("import os\nseg_path = '/your_dir/seg/pred/'\nsal_path = 'x'\n")
    assert bo.seg_path_of(script) == "/your_dir/seg/pred/"
    script.write_text("print('no path here')\n")
    try:
        bo.seg_path_of(script)
    except ValueError as e:
        assert "seg_path" in str(e)
    else:
        raise AssertionError("no error")
    from nsrom_lib.data.io import save_label_png

    a, b = tmp_path / "a", tmp_path / "b"
    lab = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_label_png(a / "x.png", lab)
    save_label_png(b / "x.png", lab)
    im = Image.fromarray(lab, mode="P")
    im.putpalette(list(range(60)))  # 20 colours: still saved with 8 bits a pixel
    im.save(a / "y.png")  # same pixels, another palette
    save_label_png(b / "y.png", lab)
    save_label_png(a / "z.png", lab)
    save_label_png(b / "z.png", lab + 1)
    res = bo.compare_folders(a, b)
    assert (res["files"], res["pixels"], res["idat"], res["bytes"]) == (3, 2, 2, 1)
    assert not res["identical"] and res["first_diff"].startswith("z.png: 12 pixels")


def test_arguments_are_checked(tmp_path, capsys):
    assert bo.main(["--official", str(tmp_path / "none"), "--cases", "3"]) == 2
    err = capsys.readouterr().err
    assert "gen_masked_label.py not found" in err and "checkout of the official NSROM code" in err
    (tmp_path / "classification").mkdir()
    for name in bo.OFFICIAL_SCRIPTS.values():
        (tmp_path / name).write_text("seg_path = 'pred/'\n")
    assert bo.main(["--official", str(tmp_path), "--official-python", str(tmp_path / "py")]) == 2
    assert "--official-python" in capsys.readouterr().err
    assert bo.main(["--official", str(tmp_path), "--cases", "0"]) == 2
    try:
        bo.main(["--official", str(tmp_path), "--size", "375"])
    except SystemExit as e:
        assert e.code == 2 and "HxW" in capsys.readouterr().err
