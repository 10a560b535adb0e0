// The TCP comm's cryptography, all OpenSSL (the system's libcrypto, else the one Node exports to
// addons): the HMAC-SHA256 of the mesh handshake, which proves a peer holds the job's key, and
// AES-256-GCM for the frames of an encrypted connection. Nothing here is hand-written crypto.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace ns {

constexpr size_t kMacBytes = 32;      // HMAC-SHA256
constexpr size_t kNonceBytes = 32;    // each side's fresh challenge
constexpr size_t kContextBytes = 16;  // SHA-256 of the group's context, truncated: says which group and epoch
constexpr size_t kTagBytes = 16;      // GCM tag of every encrypted frame

// Which libcrypto is in use: "libcrypto.so.3", "libcrypto.so" or "node".
std::string crypto_provider();

void random_bytes(uint8_t* out, size_t n);

// HMAC-SHA256(key, parts concatenated).
void hmac_sha256(const std::string& key, const std::vector<std::pair<const void*, size_t>>& parts, uint8_t out[kMacBytes]);

// Constant-time comparison of two MACs.
bool mac_equal(const uint8_t* a, const uint8_t* b);

void context_hash(const std::string& context, uint8_t out[kContextBytes]);

// One direction of one encrypted connection: AES-256-GCM, the 96-bit IV a per-direction message
// counter (each key is used by one sender only, derived per connection from both sides' nonces,
// so an IV never repeats under a key and a replayed or reordered frame fails its tag).
class FrameCipher {
 public:
  explicit FrameCipher(const uint8_t key[32]);
  ~FrameCipher();
  FrameCipher(const FrameCipher&) = delete;
  FrameCipher& operator=(const FrameCipher&) = delete;

  // out = encrypt(in), authenticating aad too.
  void seal(const uint8_t* aad, size_t aad_len, const uint8_t* in, uint8_t* out, size_t n, uint8_t tag[kTagBytes]);
  // Decrypts data in place; false when the tag does not match (tampered, replayed or out of order).
  bool open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t n, const uint8_t tag[kTagBytes]);

 private:
  void iv(uint8_t out[12]);
  EVP_CIPHER_CTX* ctx_;
  uint8_t key_[32];
  uint64_t counter_ = 0;
};

}  // namespace ns
