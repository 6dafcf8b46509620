"""An admin, in a real browser (Debian's Chromium via Playwright) against a live server and a real worker,
uploads a checkpoint in each format (GGUF, safetensors folder .zip, LoRA adapter .zip on the first), watches
each validate to Ready, makes the adapter the default for question answering, and jobs then run on each."""
import re
import zipfile
from pathlib import Path

import pytest
import torch
from playwright.sync_api import Page, expect

from modelzoo.engine import load_checkpoint
from modelzoo.engine.lora import attach, save_adapter
from tests.modelzoo.gguf_factory import write_tiny_gguf
from tests.modelzoo.hf_dir_factory import write_hf_dir

pytestmark = pytest.mark.django_db(transaction=True)


def zipped(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"{folder.name}/{file.name}")
    return archive


def adapter_for(gguf_file: Path, folder: Path) -> Path:
    loaded = load_checkpoint(gguf_file, device="cpu", dtype=torch.float32)
    torch.manual_seed(1)
    for param in attach(loaded.model, rank=2, alpha=4.0):
        param.data.normal_(0, 0.5)
    return save_adapter(loaded.model, folder, base_name="tiny-gguf", rank=2, alpha=4.0)


def upload(page: Page, url: str, name: str, file: Path, base: str | None = None) -> None:
    page.goto(f"{url}/admin/modelzoo/checkpoint/add/")
    page.fill("#id_name", name)
    page.set_input_files("#id_upload", str(file))
    if base:
        page.select_option("#id_base", label=base)
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text(re.compile(f"{name} uploaded; it is being validated", re.I))


def watch_until_ready(page: Page, name: str, timeout_s: float = 180) -> None:
    """Reload the checkpoint list, as an admin would, until the row says Ready (or Rejected, which fails)."""
    row = page.locator("#result_list tr", has_text=name)
    for _ in range(int(timeout_s / 0.5)):
        page.reload()
        status = row.locator("td.field-status").inner_text()
        assert status != "Rejected", row.inner_text()
        if status == "Ready":
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"{name} is still {status}")


def submit_job(page: Page, url: str, task: str, prompt: str, checkpoint: str | None = None) -> None:
    page.goto(f"{url}/jobs/new/")
    page.select_option("#id_task", task)
    page.fill("#id_prompt", prompt)
    if checkpoint:
        page.select_option("#id_checkpoint", label=checkpoint)
    page.click("details.advanced summary")
    page.fill("#id_max_tokens", "8")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=120_000)


def test_an_admin_uploads_each_format_makes_one_a_task_default_and_jobs_run_on_them(
    page, live_server, worker, staff, checkpoint, tmp_path
):
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=4096)
    safetensors_zip = zipped(write_hf_dir(gguf_file, tmp_path / "tiny-hf"), tmp_path / "tiny-hf.zip")
    lora_zip = zipped(adapter_for(gguf_file, tmp_path / "tiny-lora"), tmp_path / "tiny-lora.zip")
    url = live_server.url

    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-password-1")
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(r"/admin/$"))

    upload(page, url, "tiny-gguf", gguf_file)
    watch_until_ready(page, "tiny-gguf")
    upload(page, url, "tiny-safetensors", safetensors_zip)
    upload(page, url, "tiny-lora", lora_zip, base="tiny-gguf")
    watch_until_ready(page, "tiny-safetensors")
    watch_until_ready(page, "tiny-lora")
    lora_row = page.locator("#result_list tr", has_text="tiny-lora")
    expect(lora_row.locator("td.field-format")).to_have_text("LoRA adapter (on a base checkpoint)")

    lora_row.locator("input.action-select").check()
    page.select_option("select[name=action]", "make_default_for_qa")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text(re.compile("tiny-lora is now the default for qa jobs", re.I))
    expect(page.locator("#result_list tr", has_text="tiny-lora").locator("td.field-default_for")).to_have_text("qa")

    submit_job(page, url, "qa", "Anything?")  # no checkpoint chosen: the task's default
    expect(page.locator("p.meta")).to_contain_text("tiny-lora")
    submit_job(page, url, "code", "Say hi.", checkpoint="tiny-safetensors")
    expect(page.locator("p.meta")).to_contain_text("tiny-safetensors")
    submit_job(page, url, "summarize", "Short text to summarize.", checkpoint="tiny-gguf")
    expect(page.locator("p.meta")).to_contain_text("tiny-gguf")
