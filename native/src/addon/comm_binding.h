// addon.Comm / addon.ncclUniqueId (docs/ENGINE.md "Addon JS API") and the bridge the backends
// use to get the C++ communicator behind a JS Comm (engine.setTpComm).
#pragma once

#include <napi.h>

#include <memory>

#include "engine.h"

namespace ns {

// Registers addon.Comm and addon.ncclUniqueId on the module's exports.
void InitComm(Napi::Env env, Napi::Object exports);

// The communicator behind an addon.Comm object; throws Napi::TypeError for anything else.
std::shared_ptr<Communicator> UnwrapComm(Napi::Value value);

}  // namespace ns
