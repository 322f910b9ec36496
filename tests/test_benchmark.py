from partwhole import benchmark


def test_tiny_benchmark_prints_every_figure(capsys):
    assert benchmark.main(["--tiny", "--images", "10"]) == 0
    out = capsys.readouterr().out
    for stage in ("sam_encoder", "sam_decoder", "embedding", "decode", "one_crop_mode", "both_crop_modes"):
        assert f"{stage}: " in out
    assert "MB per image" in out and "images/s" in out and "whole study" in out
    # float16 targets: points x levels x dim x 2 bytes per image (64 x 3 x 64 x 2 = 24,576, plus the .npy header)
    megabytes = float(out.split("targets on disk: ")[1].split(" MB")[0])
    assert 0.024 <= megabytes <= 0.026
