"""What README.md and docs/ name exists: every repository file (configs, tools, tests...), every
import of deformable_detr or detectron2 in a python block, every deformable_detr.x name in inline
code, every relative link and its heading. Each check is also shown to name a wrong entry."""

import pytest

from docs_cases import (
    PAGES,
    broken_links,
    failing_imports,
    missing_files,
    read,
    unresolved_names,
)


@pytest.mark.parametrize("page", PAGES)
def test_every_file_a_page_names_exists(page):
    assert missing_files(read(page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_import_in_a_python_block_imports(page):
    assert failing_imports(read(page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_deformable_detr_name_in_inline_code_resolves(page):
    assert unresolved_names(read(page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    assert broken_links(page, read(page)) == []


def test_the_pages_are_found():
    assert PAGES[0] == "README.md"
    assert "docs/training.md" in PAGES and "docs/development.md" in PAGES


def test_a_wrong_path_is_named():
    text = (
        "Train with `configs/ddetr_r51.yaml` or configs/ddetr_r50.yaml; "
        "`configs/ddetr_{swin_t,swin_x}.yaml`, then `tools/convert_nothing.py --input a.pth`;\n"
        "```bash\npython train_net.py --config-file configs/quickstart.yml\n```\n"
        "weights/r50.pth and configs/$c.yaml are the reader's.\n"
        "| `ddetr_r50.yaml` | `ddetr_r5O.yaml` |"
    )
    assert missing_files(text) == [
        "configs/ddetr_r51.yaml",
        "configs/ddetr_r5O.yaml",
        "configs/ddetr_swin_x.yaml",
        "configs/quickstart.yml",
        "tools/convert_nothing.py",
    ]


def test_a_wrong_import_or_name_is_named():
    text = (
        "```python\nfrom deformable_detr import add_deformable_detr_config\n"
        "from deformable_detr import no_such_function\nimport my_own_module\n```\n"
        "`deformable_detr.flops.count_flops` and `deformable_detr.layers.no_such_op`"
    )
    ((line, error),) = failing_imports(text)
    assert line == "from deformable_detr import no_such_function"
    assert "no_such_function" in error
    assert unresolved_names(text) == ["deformable_detr.layers.no_such_op"]


def test_a_wrong_link_or_heading_is_named():
    text = (
        "[ok](training.md#the-quickstart) [ok](../README.md) [ok](#here) [web](https://a.b/c)\n"
        "[no file](trainig.md) [no heading](training.md#the-quickstrat) [no](#nowhere)\n"
        "```bash\n# not-a-heading\n```\n[no](#not-a-heading)\n## Here\n"
    )
    assert broken_links("docs/new_page.md", text) == [
        "trainig.md",
        "training.md#the-quickstrat",
        "#nowhere",
        "#not-a-heading",
    ]
