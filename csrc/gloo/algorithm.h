// Declaration-only stand-in (see csrc/gloo/README.md).
#pragma once
#include "gloo/context.h"
