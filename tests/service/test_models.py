"""The API's job options mirror the pipeline's: same names and defaults, only ranges added."""

from dataclasses import fields

from recipe.pipeline import JobOptions
from service.models import JobOptionsRequest


def test_api_options_are_the_pipelines_options():
    pipeline = {f.name: f.default for f in fields(JobOptions)}
    api = {name: field.default for name, field in JobOptionsRequest.model_fields.items()}
    assert api == pipeline, "an option added to JobOptions must be offered (with its range) by the API too"
    assert JobOptionsRequest().to_job_options() == JobOptions()
