// A move-only `void()` callable for events, smaller and cheaper to move than std::function.
//
// A callable that is trivially copyable and fits in kInline bytes (a lambda capturing `this` and
// a couple of indices or times) is stored inline; anything else lives on the heap behind a
// pointer kept in the same bytes. Either way the stored representation (Raw) is trivially
// copyable, so the event queue moves events with plain memory copies and owns them by hand:
// Callback::release() hands the representation over, Callback::adopt() takes it back.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace moesim::sim {

class Callback {
 public:
  static constexpr std::size_t kInline = 24;

  struct Ops {
    void (*invoke)(void* storage);
    void (*destroy)(void* storage);  // nullptr: nothing to do
  };
  struct Raw {
    const Ops* ops = nullptr;
    alignas(8) unsigned char storage[kInline];
  };
  static_assert(std::is_trivially_copyable_v<Raw>);

  Callback() = default;
  Callback(std::nullptr_t) {}  // NOLINT: an empty callback, like std::function's

  template <class F, class D = std::decay_t<F>,
            class = std::enable_if_t<!std::is_same_v<D, Callback> && std::is_invocable_r_v<void, D&>>>
  Callback(F&& f) {  // NOLINT: implicit, as std::function's
    if constexpr (std::is_constructible_v<bool, const D&>) {
      // Function pointers and std::function can be empty; keep "empty" meaning empty.
      if (!static_cast<bool>(f)) return;
    }
    if constexpr (fits_inline<D>()) {
      static constexpr Ops ops{[](void* s) { (*std::launder(static_cast<D*>(s)))(); }, nullptr};
      ::new (static_cast<void*>(raw_.storage)) D(std::forward<F>(f));
      raw_.ops = &ops;
    } else {
      static constexpr Ops ops{[](void* s) { (**static_cast<D**>(s))(); },
                               [](void* s) { delete *static_cast<D**>(s); }};
      D* p = new D(std::forward<F>(f));
      std::memcpy(raw_.storage, &p, sizeof p);
      raw_.ops = &ops;
    }
  }

  Callback(Callback&& o) noexcept : raw_(o.raw_) { o.raw_.ops = nullptr; }
  Callback& operator=(Callback&& o) noexcept {
    if (this != &o) {
      reset();
      raw_ = o.raw_;
      o.raw_.ops = nullptr;
    }
    return *this;
  }
  Callback(const Callback&) = delete;
  Callback& operator=(const Callback&) = delete;
  ~Callback() { reset(); }

  explicit operator bool() const { return raw_.ops != nullptr; }
  void operator()() { raw_.ops->invoke(raw_.storage); }

  // Hands the representation over; this callback is empty afterwards.
  Raw release() {
    Raw r = raw_;
    raw_.ops = nullptr;
    return r;
  }
  static Callback adopt(const Raw& r) {
    Callback c;
    c.raw_ = r;
    return c;
  }
  // Destroys a released representation without running it.
  static void destroy(Raw& r) {
    if (r.ops != nullptr && r.ops->destroy != nullptr) r.ops->destroy(r.storage);
    r.ops = nullptr;
  }

 private:
  template <class D>
  static constexpr bool fits_inline() {
    return sizeof(D) <= kInline && alignof(D) <= alignof(Raw) && std::is_trivially_copyable_v<D> &&
           std::is_trivially_destructible_v<D>;
  }
  void reset() { destroy(raw_); }

  Raw raw_;
};

}  // namespace moesim::sim
