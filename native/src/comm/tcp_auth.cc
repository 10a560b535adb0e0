#include "comm/tcp_auth.h"

#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace ns {
namespace {

// The OpenSSL functions we call, from the system's libcrypto when there is one, else the copy Node
// links and exports to addons (same API). The system library comes first: a distribution's Node
// may carry an OpenSSL built without assembly (30-50 MB/s AES-GCM and SHA-256 against 4 GB/s for
// the system's on the same machine), which would make --encrypt-data-plane needlessly slow.
struct Lib {
  std::string provider;
  decltype(&RAND_bytes) rand_bytes;
  decltype(&HMAC) hmac;
  decltype(&EVP_sha256) evp_sha256;
  decltype(&CRYPTO_memcmp) memcmp_ct;
  decltype(&SHA256) sha256;
  decltype(&OPENSSL_cleanse) cleanse;
  decltype(&EVP_CIPHER_CTX_new) ctx_new;
  decltype(&EVP_CIPHER_CTX_free) ctx_free;
  decltype(&EVP_CIPHER_CTX_ctrl) ctx_ctrl;
  decltype(&EVP_aes_256_gcm) aes_256_gcm;
  decltype(&EVP_EncryptInit_ex) enc_init;
  decltype(&EVP_EncryptUpdate) enc_update;
  decltype(&EVP_EncryptFinal_ex) enc_final;
  decltype(&EVP_DecryptInit_ex) dec_init;
  decltype(&EVP_DecryptUpdate) dec_update;
  decltype(&EVP_DecryptFinal_ex) dec_final;
};

template <typename F>
bool bind(void* h, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(h, name));
  return f != nullptr;
}

bool bind_all(void* h, Lib& l) {
  return bind(h, "RAND_bytes", l.rand_bytes) && bind(h, "HMAC", l.hmac) && bind(h, "EVP_sha256", l.evp_sha256) &&
         bind(h, "CRYPTO_memcmp", l.memcmp_ct) && bind(h, "SHA256", l.sha256) && bind(h, "OPENSSL_cleanse", l.cleanse) &&
         bind(h, "EVP_CIPHER_CTX_new", l.ctx_new) && bind(h, "EVP_CIPHER_CTX_free", l.ctx_free) &&
         bind(h, "EVP_CIPHER_CTX_ctrl", l.ctx_ctrl) && bind(h, "EVP_aes_256_gcm", l.aes_256_gcm) &&
         bind(h, "EVP_EncryptInit_ex", l.enc_init) && bind(h, "EVP_EncryptUpdate", l.enc_update) &&
         bind(h, "EVP_EncryptFinal_ex", l.enc_final) && bind(h, "EVP_DecryptInit_ex", l.dec_init) &&
         bind(h, "EVP_DecryptUpdate", l.dec_update) && bind(h, "EVP_DecryptFinal_ex", l.dec_final);
}

const Lib& lib() {
  static Lib l;
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* so : {"libcrypto.so.3", "libcrypto.so"}) {
      // DEEPBIND: the library's calls to its own functions must not bind to the copies Node exports.
      void* h = dlopen(so, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h && bind_all(h, l)) {
        l.provider = so;
        return;
      }
    }
    if (bind_all(RTLD_DEFAULT, l)) l.provider = "node";
  });
  if (l.provider.empty()) throw std::runtime_error("tcp comm: no OpenSSL libcrypto (neither libcrypto.so.3 nor the one Node exports)");
  return l;
}

}  // namespace

std::string crypto_provider() {
  return lib().provider;
}

void random_bytes(uint8_t* out, size_t n) {
  if (lib().rand_bytes(out, int(n)) != 1) throw std::runtime_error("tcp comm: no random bytes from OpenSSL");
}

void hmac_sha256(const std::string& key, const std::vector<std::pair<const void*, size_t>>& parts, uint8_t out[kMacBytes]) {
  std::vector<uint8_t> msg;
  for (const auto& p : parts) msg.insert(msg.end(), static_cast<const uint8_t*>(p.first), static_cast<const uint8_t*>(p.first) + p.second);
  unsigned int len = 0;
  if (!lib().hmac(lib().evp_sha256(), key.data(), int(key.size()), msg.data(), msg.size(), out, &len) || len != kMacBytes)
    throw std::runtime_error("tcp comm: HMAC-SHA256 failed");
}

bool mac_equal(const uint8_t* a, const uint8_t* b) {
  return lib().memcmp_ct(a, b, kMacBytes) == 0;
}

void context_hash(const std::string& context, uint8_t out[kContextBytes]) {
  uint8_t full[SHA256_DIGEST_LENGTH];
  lib().sha256(reinterpret_cast<const uint8_t*>(context.data()), context.size(), full);
  std::memcpy(out, full, kContextBytes);
}

FrameCipher::FrameCipher(const uint8_t key[32]) : ctx_(lib().ctx_new()) {
  if (!ctx_) throw std::runtime_error("tcp comm: EVP_CIPHER_CTX_new failed");
  std::memcpy(key_, key, sizeof key_);
}

FrameCipher::~FrameCipher() {
  lib().cleanse(key_, sizeof key_);
  lib().ctx_free(ctx_);
}

void FrameCipher::iv(uint8_t out[12]) {
  std::memset(out, 0, 12);
  std::memcpy(out + 4, &counter_, 8);
  ++counter_;
}

void FrameCipher::seal(const uint8_t* aad, size_t aad_len, const uint8_t* in, uint8_t* out, size_t n, uint8_t tag[kTagBytes]) {
  uint8_t v[12];
  iv(v);
  int len = 0;
  const Lib& c = lib();
  bool ok = c.enc_init(ctx_, c.aes_256_gcm(), nullptr, key_, v) == 1 && c.enc_update(ctx_, nullptr, &len, aad, int(aad_len)) == 1;
  // EVP lengths are int: large frames go through in chunks.
  for (size_t done = 0; ok && done < n;) {
    const int chunk = int(std::min<size_t>(n - done, 1u << 30));
    ok = c.enc_update(ctx_, out + done, &len, in + done, chunk) == 1;
    done += size_t(chunk);
  }
  ok = ok && c.enc_final(ctx_, out + n, &len) == 1 && c.ctx_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, int(kTagBytes), tag) == 1;
  if (!ok) throw std::runtime_error("tcp comm: AES-256-GCM encryption failed");
}

bool FrameCipher::open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t n, const uint8_t tag[kTagBytes]) {
  uint8_t v[12];
  iv(v);
  int len = 0;
  const Lib& c = lib();
  bool ok = c.dec_init(ctx_, c.aes_256_gcm(), nullptr, key_, v) == 1 && c.dec_update(ctx_, nullptr, &len, aad, int(aad_len)) == 1;
  for (size_t done = 0; ok && done < n;) {
    const int chunk = int(std::min<size_t>(n - done, 1u << 30));
    ok = c.dec_update(ctx_, data + done, &len, data + done, chunk) == 1;
    done += size_t(chunk);
  }
  uint8_t t[kTagBytes];
  std::memcpy(t, tag, kTagBytes);
  ok = ok && c.ctx_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, int(kTagBytes), t) == 1;
  return ok && c.dec_final(ctx_, data + n, &len) == 1;
}

}  // namespace ns
