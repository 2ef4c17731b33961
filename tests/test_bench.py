"""``rtcine bench``'s steady-state quality: PSNR over the frames that had the ESPIRiT maps."""
from rtcine.cmd_bench import _steady_psnr


def test_steady_psnr_averages_the_frames_from_the_espirit_maps_on():
    run = {"espirit_from_frame": 2, "psnr_frames": {0: 10.0, 1: 12.0, 2: 20.0, 3: 22.0}}
    assert _steady_psnr(run) == 21.0
    offline = [30.0, 30.0, 26.0, 28.0]                  # the offline reference, same frames
    assert _steady_psnr(run, offline) == 27.0
    json_keys = {"espirit_from_frame": 2, "psnr_frames": {"2": 20.0, "3": 24.0}}   # read back from --json
    assert _steady_psnr(json_keys) == 22.0
    assert _steady_psnr({"espirit_from_frame": None, "psnr_frames": {}}) != _steady_psnr(run)   # nan: no maps
