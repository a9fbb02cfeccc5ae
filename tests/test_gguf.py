"""`rlqa import-gguf`: a GGUF file becomes a plain Hugging Face directory; every mistake exits 2 with one line."""

import json
import struct

from transformers import AutoTokenizer

from rlqa.cli import main


def error_line(capsys, *args) -> str:
    assert main(["import-gguf", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlqa: error: ")
    return err.strip()


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.gguf"
    assert error_line(capsys, str(missing), str(tmp_path / "out")) == f"rlqa: error: {missing}: no such GGUF file"
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    assert "transformers cannot load it as a causal LM" in error_line(capsys, str(not_gguf), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no debris
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    assert error_line(capsys, str(not_gguf), str(taken)) == f"rlqa: error: {taken}: already exists and is not an empty directory"
    assert "give a GGUF file or --smollm2" in error_line(capsys, str(tmp_path / "out"))
    assert "give a GGUF file or --smollm2" in error_line(capsys, "--smollm2", str(not_gguf), str(tmp_path / "out"))


def test_the_imported_stand_in_is_a_plain_model_directory_with_its_chat_template(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500e6  # float32, not the 4-bit file


def test_a_truncated_gguf_file_exits_2_with_one_line(tmp_path, capsys):
    # a GGUF v3 header that promises 1 tensor and 1 metadata entry, then ends inside the entry's key length
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + b"\x05\x00")
    line = error_line(capsys, str(cut), str(tmp_path / "out"))
    assert line == f"rlqa: error: {cut}: truncated GGUF file (it ends inside its header or metadata)"
    assert not (tmp_path / "out").exists()
