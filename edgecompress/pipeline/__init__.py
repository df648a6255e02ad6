"""The flow: the stage interface and the stages, the runner (plan -> cache -> measure -> report -> gates), the
cache and output folder, the report, and the merge of reports and on-device benchmarks."""
