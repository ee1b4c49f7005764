"""Offline stand-in for rules_cc's cc/defs.bzl (Bazel 4.x).

Bazel 4's @bazel_tools loads @rules_cc//cc:defs.bzl, and Bazel would download
the real rules_cc for it. The C++ rules are still built into Bazel 4, so
forwarding every symbol to `native` is all the real file does with
--incompatible_load_cc_rules_from_bzl off (the default).
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def fdo_prefetch_hints(**attrs):
    native.fdo_prefetch_hints(**attrs)

def fdo_profile(**attrs):
    native.fdo_profile(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)

def objc_import(**attrs):
    native.objc_import(**attrs)
