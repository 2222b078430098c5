"""Running a trained MERV: where and in which precision (`devices`), loading a model or processor by folder or Hub id
with one-line failures (`loading`), and answering many questions about one video from its cached prefix
(`prefix_cache`); grouping and batching work (`batching`)."""
