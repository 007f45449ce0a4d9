"""`tf.train.Example` protobuf classes built at run time, for benchmarks and equivalence tests.

sawt's codec (trainer/data/example.py) needs no protobuf. This module gives the reference peer a real
protobuf implementation of the same messages, without TensorFlow: the descriptor below declares the same
messages and field numbers as TensorFlow's example.proto and feature.proto (package ``tensorflow``), and
``google.protobuf`` (a test/benchmark dependency) builds the classes from it.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace


@functools.cache
def example_classes() -> SimpleNamespace:
    """Returns a namespace with protobuf classes Example, Features, Feature, BytesList, FloatList, Int64List."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="sawt_tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str]], oneof: str | None = None):
        msg = file.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if oneof:
                field.oneof_index = 0
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, "")])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, "")])  # proto3 packs repeated scalars by default
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, "")])
    message(
        "Feature",
        [
            ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
            ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
            ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
        ],
        oneof="kind",
    )
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features")])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    return SimpleNamespace(
        **{n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}
    )
