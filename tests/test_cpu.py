"""CPU facts from /proc/cpuinfo: which ISA flags are named, and the native-bf16 rule."""

from seer_tf import cpu


def test_describe_names_the_model_and_the_isa_that_picks_the_kernels(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Xeon\n"
                       "flags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    info = cpu.describe(str(cpuinfo))
    assert info["cpu"] == "Some Xeon" and info["known"]
    assert info["isa"] == ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    missing = cpu.describe(str(tmp_path / "missing"))
    assert missing["isa"] == [] and not missing["known"]


def test_native_bf16_follows_the_flags(tmp_path, monkeypatch):
    avx2 = tmp_path / "avx2"
    avx2.write_text("model name\t: EPYC\nflags\t\t: fpu avx2\n")
    real = cpu.describe
    for path, expected in ((avx2, False), (tmp_path / "missing", True)):
        monkeypatch.setattr(cpu, "describe", lambda p=str(path): real(p))
        cpu.has_native_bf16.cache_clear()
        assert cpu.has_native_bf16() is expected
    cpu.has_native_bf16.cache_clear()
