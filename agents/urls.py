from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [
    path("", views.agent_list_page, name="list"),
    path("<int:agent_id>/", views.agent_detail_page, name="detail"),
]
