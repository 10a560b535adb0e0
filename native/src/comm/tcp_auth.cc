#include "comm/tcp_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace ns {

void random_bytes(uint8_t* out, size_t n) {
  if (RAND_bytes(out, int(n)) != 1) throw std::runtime_error("tcp comm: no random bytes from OpenSSL");
}

void hmac_sha256(const std::string& key, const std::vector<std::pair<const void*, size_t>>& parts, uint8_t out[kMacBytes]) {
  std::vector<uint8_t> msg;
  for (const auto& p : parts) msg.insert(msg.end(), static_cast<const uint8_t*>(p.first), static_cast<const uint8_t*>(p.first) + p.second);
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), int(key.size()), msg.data(), msg.size(), out, &len) || len != kMacBytes)
    throw std::runtime_error("tcp comm: HMAC-SHA256 failed");
}

bool mac_equal(const uint8_t* a, const uint8_t* b) {
  return CRYPTO_memcmp(a, b, kMacBytes) == 0;
}

void context_hash(const std::string& context, uint8_t out[kContextBytes]) {
  uint8_t full[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(context.data()), context.size(), full);
  std::memcpy(out, full, kContextBytes);
}

FrameCipher::FrameCipher(const uint8_t key[32]) : ctx_(EVP_CIPHER_CTX_new()) {
  if (!ctx_) throw std::runtime_error("tcp comm: EVP_CIPHER_CTX_new failed");
  std::memcpy(key_, key, sizeof key_);
}

FrameCipher::~FrameCipher() {
  OPENSSL_cleanse(key_, sizeof key_);
  EVP_CIPHER_CTX_free(ctx_);
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
  bool ok = EVP_EncryptInit_ex(ctx_, EVP_aes_256_gcm(), nullptr, key_, v) == 1 &&
            EVP_EncryptUpdate(ctx_, nullptr, &len, aad, int(aad_len)) == 1;
  // EVP lengths are int: large frames go through in chunks.
  for (size_t done = 0; ok && done < n;) {
    const int chunk = int(std::min<size_t>(n - done, 1u << 30));
    ok = EVP_EncryptUpdate(ctx_, out + done, &len, in + done, chunk) == 1;
    done += size_t(chunk);
  }
  ok = ok && EVP_EncryptFinal_ex(ctx_, out + n, &len) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, int(kTagBytes), tag) == 1;
  if (!ok) throw std::runtime_error("tcp comm: AES-256-GCM encryption failed");
}

bool FrameCipher::open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t n, const uint8_t tag[kTagBytes]) {
  uint8_t v[12];
  iv(v);
  int len = 0;
  bool ok = EVP_DecryptInit_ex(ctx_, EVP_aes_256_gcm(), nullptr, key_, v) == 1 &&
            EVP_DecryptUpdate(ctx_, nullptr, &len, aad, int(aad_len)) == 1;
  for (size_t done = 0; ok && done < n;) {
    const int chunk = int(std::min<size_t>(n - done, 1u << 30));
    ok = EVP_DecryptUpdate(ctx_, data + done, &len, data + done, chunk) == 1;
    done += size_t(chunk);
  }
  uint8_t t[kTagBytes];
  std::memcpy(t, tag, kTagBytes);
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, int(kTagBytes), t) == 1;
  return ok && EVP_DecryptFinal_ex(ctx_, data + n, &len) == 1;
}

}  // namespace ns
